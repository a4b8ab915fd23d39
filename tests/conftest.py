"""Fixtures shared across test packages: the default model, loaded once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle, default_model_path, load_model

# Tests run the PyTorch reference backend unless they ask for another (flags and explicit
# settings win over the environment): the automatic choice builds and gates an INT8 ONNX
# model, which tests/integration/test_int8_backends.py covers on its own. Subprocesses
# started by tests inherit this.
os.environ.setdefault("TESSERA_BACKEND__NAME", "torch")


@pytest.fixture(scope="session")
def smollm2_bundle() -> ModelBundle:
    """SmolLM2-135M-Instruct from the bundled GGUF (converted once, then from cache)."""
    return load_model(None)


@pytest.fixture(scope="session")
def hf_reference_model() -> Any:
    """Hugging Face transformers loading the same GGUF: the reference implementation."""
    import torch
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def make_engine(bundle: ModelBundle, **groups: dict[str, Any]) -> LLMEngine:
    """An engine on an already-loaded bundle with a small KV pool for tests."""
    groups.setdefault("cache", {"kv_cache_memory": "256MiB"})
    groups["cache"].setdefault("kv_cache_memory", "256MiB")
    groups.setdefault("model", {"max_model_len": 2048})
    return LLMEngine(EngineConfig(**groups), bundle=bundle)


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_bundle: ModelBundle) -> Iterator[LLMEngine]:
    """A shared engine on the default model; tests must leave it idle."""
    engine = make_engine(smollm2_bundle)
    yield engine
    assert not engine.has_unfinished()
