"""The ONNX backend on every dense family (tests/family_models.py) against transformers itself:
greedy tokens through the whole engine, with prompts, prefill chunks and decodes that cross
the families' sliding windows, in both attention forms of the float graph; the INT8 graph
close to the float one; and mixture-of-experts models refused up front, --backend auto then
starting on torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.accuracy import GATE_TEXT, compare_on_text
from engine.api import SamplingParams
from engine.backends import BackendTarget, BatchInputs, create_backend, onnx_backend
from engine.backends.onnx_graph import GraphOptions, build_model_file
from engine.backends.onnx_int8 import weight_matmuls
from engine.config import BackendConfig
from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle, load_model
from tests.conftest import make_engine
from tests.family_models import WINDOW, build_family_model

DENSE = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]
PROMPT_LENGTHS = (30, 17, 5)  # two prompts past the window, one that decodes past it
CHUNK = 10  # prefill chunk: [0, 10) then [10, 20), which crosses the window of 12
NEW_TOKENS = 16
MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def base() -> ModelBundle:
    """The tokenizer the family models are saved with."""
    return load_model("dummy:tiny")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the module: each family's float graph is exported once."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def prompts(base: ModelBundle) -> list[list[int]]:
    rng = np.random.default_rng(0)
    vocab = base.config.vocab_size
    return [rng.integers(100, vocab, n).tolist() for n in PROMPT_LENGTHS]


@pytest.fixture(scope="module", params=DENSE)
def family(
    request: pytest.FixtureRequest,
    base: ModelBundle,
    prompts: list[list[int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, ModelBundle, list[list[int]]]:
    """A family's tiny model as the engine loads it, and transformers' greedy tokens."""
    name = request.param
    path = tmp_path_factory.mktemp(name) / name
    hf = build_family_model(name, path, base)
    expected = []
    with torch.no_grad():
        for p in prompts:
            out = hf.generate(
                torch.tensor([p]),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
            )
            expected.append(out[0, len(p) :].tolist())
    return name, load_model(str(path)), expected


def onnx_engine(bundle: ModelBundle, artifacts: Path) -> LLMEngine:
    """An engine on the float ONNX backend that prefills at most CHUNK tokens a step."""
    return make_engine(
        bundle,
        backend={"name": "onnx", "device": "cpu", "quantization": "none"},
        model={"max_model_len": MAX_MODEL_LEN, "cache_dir": str(artifacts)},
        scheduler={"long_prefill_token_threshold": CHUNK},
    )


def greedy(
    engine: LLMEngine, prompts: list[list[int]]
) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The engine's greedy tokens for ``prompts``, submitted together, and the query spans
    (past, new) its backend ran."""
    spans: list[tuple[int, int]] = []
    forward: Callable[[BatchInputs], torch.Tensor] = engine.backend.forward

    def recording(inputs: BatchInputs) -> torch.Tensor:
        new = np.diff(inputs.query_start_loc)
        spans.extend(zip((inputs.context_lens - new).tolist(), new.tolist(), strict=True))
        return forward(inputs)

    engine.backend.forward = recording  # type: ignore[method-assign]
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = engine.generate(prompts, params)
    return [list(o.completions[0].token_ids) for o in outputs], spans


@pytest.fixture
def plain_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend exports attention as plain ONNX ops (the CUDA and TensorRT form) even on
    the CPU provider, where it would take GroupQueryAttention."""

    def graph_options(**settings: Any) -> GraphOptions:
        return GraphOptions(**{**settings, "fused_attention": False})

    monkeypatch.setattr(onnx_backend, "GraphOptions", graph_options)


def test_float_graph_greedy_matches_transformers(
    family: tuple[str, ModelBundle, list[list[int]]],
    prompts: list[list[int]],
    artifacts: Path,
) -> None:
    """GroupQueryAttention (the CPU graph): chunks and decodes that cross the window."""
    name, bundle, expected = family
    tokens, spans = greedy(onnx_engine(bundle, artifacts), prompts)
    assert tokens == expected, name
    assert any(past < WINDOW < past + new for past, new in spans if new > 1)  # crossing chunk
    assert any(past > WINDOW for past, new in spans if new > 1)  # a chunk past the window
    assert any(past > WINDOW for past, new in spans if new == 1)  # decodes past it


def test_plain_attention_graph_greedy_matches_transformers(
    family: tuple[str, ModelBundle, list[list[int]]],
    prompts: list[list[int]],
    artifacts: Path,
    plain_attention: None,
) -> None:
    """The plain-ops attention form, on the same prompts, chunks and decodes."""
    name, bundle, expected = family
    tokens, _ = greedy(onnx_engine(bundle, artifacts), prompts)
    assert tokens == expected, name


@pytest.fixture(scope="module")
def text_ids(base: ModelBundle) -> list[int]:
    return base.tokenizer.encode(GATE_TEXT.read_text())[:1024]


def test_int8_graph_stays_close_to_float(
    family: tuple[str, ModelBundle, list[list[int]]], text_ids: list[int], artifacts: Path
) -> None:
    """INT8 (dynamic, the CPU form) against the float graph, teacher-forced on the gate
    text in 128-token windows (past the sliding window): perplexity within the ONNX INT8
    bound of tests/integration/test_int8_backends.py (+3 %) and a mean KL five times under
    its bound. Top-1 agreement is held to 85 %, not SmolLM2's 90 %: these random-weight
    models leave many near ties (logits with a standard deviation of 1.2, median top-two gap
    about 0.25), and it measures 88-95 %."""
    name, bundle, _ = family
    target = BackendTarget.resolve(BackendConfig(device="cpu"), MAX_MODEL_LEN, artifacts)
    float_graph = create_backend("onnx", bundle, target)
    int8_graph = create_backend("onnx", bundle, target.with_quantization("int8"))
    result = compare_on_text(float_graph, int8_graph, text_ids, window=128)
    print(f"{name} onnx int8 vs float: {result}")
    assert result.perplexity_ratio <= 1.03, result
    assert result.mean_kl < 0.01, result
    assert result.top1_agreement >= 0.85, result


def test_int8_graph_quantizes_every_projection_and_keeps_norms_and_biases_float(
    family: tuple[str, ModelBundle, list[list[int]]], artifacts: Path
) -> None:
    """Every weight MatMul (four a layer and the vocabulary projection, tied or not) becomes
    an int8 MatMulNBits; norm gains (q/k and sandwich norms included) and q/k/v biases stay
    float32 initializers."""
    import onnx
    from onnx import TensorProto

    name, bundle, _ = family
    cfg = bundle.config
    opts = GraphOptions(quantization="int8", max_positions=MAX_MODEL_LEN)
    path = build_model_file(bundle, opts, artifacts)
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 4 * cfg.num_hidden_layers + 1
    assert weight_matmuls(path) == []
    kept = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    float_params = {
        f"model.layers.0.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")
    }
    if cfg.sandwich_norms:
        float_params |= {
            f"model.layers.0.{n}_layernorm.weight" for n in ("pre_feedforward", "post_feedforward")
        }
    if cfg.qk_norm:
        float_params |= {"model.layers.0.q_norm.weight", "model.layers.0.k_norm.weight"}
    if cfg.attention_bias:
        float_params.add("model.layers.0.qkv_bias")
    assert float_params <= kept, f"{name}: {sorted(float_params - kept)} not kept float"


@pytest.fixture(scope="module")
def moe(base: ModelBundle, tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    path = tmp_path_factory.mktemp("mixtral") / "mixtral"
    build_family_model("mixtral", path, base)
    return load_model(str(path))


@pytest.mark.parametrize("backend", ["onnx", "tensorrt"])
def test_onnx_backends_refuse_mixture_of_experts_before_export(
    moe: ModelBundle, tmp_path: Path, backend: str
) -> None:
    target = BackendTarget.resolve(BackendConfig(device="cpu"), MAX_MODEL_LEN, tmp_path)
    message = (
        f"backend {backend} does not support mixture-of-experts models yet; use --backend torch"
    )
    with pytest.raises(ValueError, match=message):
        create_backend(backend, moe, target)
    assert not (tmp_path / "onnx").exists()  # nothing was exported


def test_auto_starts_mixture_of_experts_on_torch(moe: ModelBundle, tmp_path: Path) -> None:
    """--backend auto skips the ONNX candidate (saying why) and serves on torch. Without the
    native kernels torch's INT8 candidate is skipped too, so no gate runs: float torch."""
    engine = make_engine(
        moe,
        backend={"name": "auto", "device": "cpu", "native_kernels": False},
        model={"max_model_len": MAX_MODEL_LEN, "cache_dir": str(tmp_path)},
    )
    assert (engine.capacity.backend, engine.capacity.quantization) == ("torch", "none")
    assert "onnx int8: backend onnx does not support mixture-of-experts" in (
        engine.capacity.backend_reason
    )
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    assert len(engine.generate([[100, 200, 300]], params)[0].completions[0].token_ids) == 4
