"""The compiled backends and every INT8 mode, on the real default model.

Accuracy gates (issue 4) on tests/data/english_eval.txt (4,113 tokens, teacher forcing in
512-token windows): each INT8 mode's perplexity within 3 % of the float model's, and its
next-token top-1 agreement with the float model at least 90 %. Float ONNX must reproduce
the reference's greedy tokens, and the ONNX step must not copy the KV pool.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.accuracy import (
    MAX_PERPLEXITY_RATIO,
    MIN_TOP1_AGREEMENT,
    TextScore,
    compare,
    score_text,
)
from engine.backend_choice import choose_backend
from engine.backends import Backend, BackendOptions, BatchInputs, create_backend, onnx_graph
from engine.cpu_features import has_avx2
from engine.model_source import ModelBundle
from engine.sampling_params import SamplingParams
from tests.conftest import make_engine
from tests.integration.test_engine_fidelity import NEW_TOKENS, chat_prompts, check_all

EVAL_TEXT = Path(__file__).parents[1] / "data" / "english_eval.txt"
INT8_MODES = [
    pytest.param("torch", "auto", id="torch-int8"),
    pytest.param("onnx", "dynamic", id="onnx-int8-dynamic"),
    pytest.param("onnx", "qdq", id="onnx-int8-qdq"),
]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact cache for the module: each model is exported once."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def eval_ids(smollm2_bundle: ModelBundle) -> list[int]:
    return smollm2_bundle.tokenizer.encode(EVAL_TEXT.read_text())


@pytest.fixture(scope="module")
def float_score(smollm2_bundle: ModelBundle, eval_ids: list[int]) -> TextScore:
    return score_text(create_backend("torch", smollm2_bundle, BackendOptions()), eval_ids)


def test_eval_text_is_a_few_thousand_tokens(eval_ids: list[int]) -> None:
    assert 2000 <= len(eval_ids) <= 8000


@pytest.mark.parametrize(("backend", "scheme"), INT8_MODES)
def test_int8_mode_passes_the_accuracy_gates(
    smollm2_bundle: ModelBundle,
    eval_ids: list[int],
    float_score: TextScore,
    artifacts: Path,
    backend: str,
    scheme: str,
) -> None:
    opts = BackendOptions(quantization="int8", int8_scheme=scheme, artifact_dir=artifacts)
    result = compare(
        float_score, score_text(create_backend(backend, smollm2_bundle, opts), eval_ids)
    )
    print(f"{backend} int8 {scheme}: {result.describe()}")
    assert result.perplexity_ratio <= MAX_PERPLEXITY_RATIO, result.describe()
    assert result.top1_agreement >= MIN_TOP1_AGREEMENT, result.describe()


def test_float_onnx_scores_like_the_reference(
    smollm2_bundle: ModelBundle, eval_ids: list[int], float_score: TextScore, artifacts: Path
) -> None:
    onnx = create_backend("onnx", smollm2_bundle, BackendOptions(artifact_dir=artifacts))
    result = compare(float_score, score_text(onnx, eval_ids))
    assert abs(result.perplexity_ratio - 1) < 1e-3
    assert result.top1_agreement > 0.995


def test_float_onnx_engine_greedy_matches_the_reference(
    smollm2_bundle: ModelBundle, hf_reference_model: object, artifacts: Path
) -> None:
    """Through the whole engine (continuous batching, chunked prefill, paged KV): every
    greedy token is the reference's argmax or a near-tie, as in the engine-core test."""
    engine = make_engine(
        smollm2_bundle,
        backend={"name": "onnx", "quantization": "none"},
        model={"max_model_len": 2048, "cache_dir": str(artifacts)},
        scheduler={"max_num_batched_tokens": 64},  # forces chunked prefill mixed with decodes
    )
    prompts = chat_prompts(smollm2_bundle)[:8]
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = [r.completions[0].token_ids for r in engine.generate(prompts, greedy)]
    assert all(len(o) > 0 for o in outputs)
    check_all(hf_reference_model, prompts, outputs)


def _decode_batch(batch: int, context: int, block_size: int) -> BatchInputs:
    """``batch`` sequences decoding their token at position ``context``, blocks disjoint."""
    nb = context // block_size + 1
    tables = np.arange(batch * nb, dtype=np.int64).reshape(batch, nb)
    return BatchInputs(
        token_ids=np.full(batch, 42, dtype=np.int64),
        positions=np.full(batch, context, dtype=np.int64),
        slot_mapping=tables[:, -1] * block_size + context % block_size,
        block_tables=tables,
        context_lens=np.full(batch, context + 1, dtype=np.int64),
        query_start_loc=np.arange(batch + 1, dtype=np.int64),
        logits_indices=np.arange(batch, dtype=np.int64),
    )


def _median_step(backend: Backend, inputs: BatchInputs, steps: int = 7) -> float:
    backend.forward(inputs)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        backend.forward(inputs)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def test_onnx_step_time_does_not_grow_with_the_pool(
    smollm2_bundle: ModelBundle, artifacts: Path
) -> None:
    """The pool stays resident and is never copied: a 32x larger pool (1.4 GiB) leaves the
    step time of a fixed batch unchanged (a copy of the pool alone would take > 100 ms)."""
    opts = BackendOptions(quantization="int8", artifact_dir=artifacts)
    backend = create_backend("onnx", smollm2_bundle, opts)
    inputs = _decode_batch(batch=8, context=100, block_size=16)
    backend.allocate_kv_cache(64, 16)
    small = _median_step(backend, inputs)
    backend.allocate_kv_cache(2048, 16)
    large = _median_step(backend, inputs)
    print(f"step: {1e3 * small:.1f} ms with 64 blocks, {1e3 * large:.1f} ms with 2048 blocks")
    assert large < 1.5 * small + 0.01


def test_missing_provider_is_an_error_naming_it(
    smollm2_bundle: ModelBundle, artifacts: Path
) -> None:
    opts = BackendOptions(provider="cuda", artifact_dir=artifacts)
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider is not available"):
        create_backend("onnx", smollm2_bundle, opts)
    with pytest.raises(RuntimeError, match="TensorrtExecutionProvider is not available"):
        create_backend("tensorrt", smollm2_bundle, BackendOptions(artifact_dir=artifacts))


def test_built_artifacts_are_reused_across_restarts(
    smollm2_bundle: ModelBundle, artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = BackendOptions(quantization="int8", artifact_dir=artifacts)
    create_backend("onnx", smollm2_bundle, opts)  # built (or already built above)

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the model was exported again")

    monkeypatch.setattr(onnx_graph, "export_float", no_rebuild)
    monkeypatch.setattr(onnx_graph, "quantize_dynamic_blockwise", no_rebuild)
    backend = create_backend("onnx", smollm2_bundle, opts)
    assert backend.name == "onnx"
    # A different option is a different artifact.
    with pytest.raises(AssertionError, match="exported again"):
        create_backend("onnx", smollm2_bundle, replace(opts, int8_lm_head=False))


def test_auto_picks_the_fastest_int8_on_cpu_after_the_gate(
    smollm2_bundle: ModelBundle, artifacts: Path
) -> None:
    opts = BackendOptions(artifact_dir=artifacts)
    choice = choose_backend("auto", "auto", opts, smollm2_bundle, artifacts)
    fastest = "torch" if has_avx2() else "onnx"  # engine/backend_choice.py
    assert (choice.name, choice.quantization) == (fastest, "int8")
    assert "accuracy gates" in choice.reason
    assert list((artifacts / "gates").glob("*.json")), "the gate verdict is cached"


def test_auto_falls_back_when_a_candidate_fails_the_gate(
    smollm2_bundle: ModelBundle, artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.accuracy as accuracy

    monkeypatch.setattr(accuracy, "MIN_TOP1_AGREEMENT", 1.01)  # nothing reduced can pass
    fresh = artifacts / "strict"
    opts = BackendOptions(artifact_dir=artifacts)
    choice = choose_backend("auto", "auto", opts, smollm2_bundle, fresh)
    assert (choice.name, choice.quantization) == ("torch", "none")
    assert "failed the gates" in choice.reason


def test_default_int8_answers_the_capital_question_like_float(
    smollm2_bundle: ModelBundle, artifacts: Path
) -> None:
    """The float model's greedy answer starts with a 0.08-nat near-tie ("The" over "L");
    the gates alone let through forms (torch W8A8 with one activation scale per token, or
    per 32 channels) that flipped it into nonsense, so the default's answer is pinned too."""
    engine = make_engine(
        smollm2_bundle,
        backend={"name": "auto", "quantization": "auto"},
        model={"max_model_len": 2048, "cache_dir": str(artifacts)},
    )
    assert engine.capacity.quantization == "int8", "the default here is an INT8 mode"
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = smollm2_bundle.tokenizer.apply_chat_template(chat)
    ids = smollm2_bundle.tokenizer.encode(prompt, add_special_tokens=False)
    (result,) = engine.generate([ids], SamplingParams(max_tokens=12, temperature=0.0))
    assert result.completions[0].text.startswith("The capital of France is Paris")
