"""The step graph's two attention forms against each other and against the eager model:
ONNX Runtime's GroupQueryAttention (CPU graphs) and plain ONNX ops (CUDA / TensorRT graphs),
over a pool with scattered blocks and ragged past lengths, for decodes and a prefill chunk;
for Llama's full attention and for a sliding layer with its own score scale (Gemma 3's
query_pre_attn_scalar), whose window the past lengths and chunks cross."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.backends.onnx_graph import INPUT_NAMES, StepGraph, export_float, sample_inputs
from engine.model.attention import GatheredPoolAttention
from engine.model.decoder import DecoderModel
from engine.model_source import ModelBundle, load_model
from engine.model_source.arch import FULL, SLIDING, ArchConfig

BLOCK = 16
WINDOW = 7


@pytest.fixture(scope="module", params=["full", "sliding"])
def tiny(request: pytest.FixtureRequest) -> ModelBundle:
    """dummy:tiny as it is, or with its last layer sliding over WINDOW keys, a local RoPE
    base and scores scaled by 24 ** -0.5 instead of head_dim's."""
    bundle = load_model("dummy:tiny", seed=3)
    if request.param == "full":
        return bundle
    cfg = bundle.config
    layer_types = (FULL,) * (cfg.num_hidden_layers - 1) + (SLIDING,)
    sliding = replace(
        cfg,
        sliding_window=WINDOW,
        layer_types=layer_types,
        rope_local_theta=cfg.rope_theta / 100,
        query_pre_attn_scalar=24,
    )
    return replace(bundle, config=sliding)


@pytest.fixture(scope="module")
def graphs(tiny: ModelBundle, tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    out = {}
    for fused in (True, False):
        path = tmp_path_factory.mktemp(f"fused-{fused}") / "model.onnx"
        export_float(tiny, path, max_positions=256, fused=fused)
        out[fused] = path
    return out


def step_inputs(
    bundle: ModelBundle, past: list[int], new_tokens: int, seed: int
) -> dict[str, np.ndarray]:
    """B = len(past) sequences with `past` cached tokens each and `new_tokens` new ones; the
    pool holds random K/V and each sequence's blocks lie scattered through it."""
    rng = np.random.default_rng(seed)
    nb = max(1, -(-max(past) // BLOCK))
    pool_blocks = 4 * len(past) * nb
    feeds = sample_inputs(
        bundle, len(past), new_tokens, past_blocks=nb, pool_blocks=pool_blocks, block_size=BLOCK
    )
    feeds["past_lens"] = np.array(past, dtype=np.int64)
    feeds["positions"] = np.concatenate([np.arange(p, p + new_tokens) for p in past])
    perm = rng.permutation(pool_blocks)[: len(past) * nb]
    feeds["block_tables"] = perm.reshape(len(past), nb).astype(np.int64)
    feeds["kv_pool"] = rng.standard_normal(feeds["kv_pool"].shape).astype(np.float32)
    feeds["token_ids"] = rng.integers(0, bundle.config.vocab_size, len(feeds["token_ids"]))
    return feeds


def eager(bundle: ModelBundle, feeds: dict[str, np.ndarray], fused: bool) -> list[np.ndarray]:
    model = DecoderModel(bundle.config, max_positions=256)
    model.load_hf_weights(bundle.weights)
    with torch.inference_mode():
        out = StepGraph(model.eval(), fused)(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
    return [t.numpy() for t in out]


CASES = pytest.mark.parametrize(
    ("past", "new_tokens"),
    [([5, 40, 17, 0], 1), ([33], 7), ([0], 12)],
    ids=["decodes", "chunk-after-past", "fresh-prompt"],
)


def reference(
    feeds: dict[str, np.ndarray],
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    layer: int,
    cfg: ArchConfig,
) -> np.ndarray:
    """Attention read straight off the documented pool layout, one query at a time; a
    sliding layer's query at position p sees keys p - window + 1 .. p."""
    pool, tables, past = feeds["kv_pool"], feeds["block_tables"], feeds["past_lens"]
    kvh = cfg.num_key_value_heads
    blocks = pool.shape[0] // (2 * cfg.num_hidden_layers * kvh)
    new = q.shape[0] // len(past)
    group = q.shape[1] // kvh
    out = np.zeros_like(q)
    for b, p in enumerate(past):
        for h in range(q.shape[1]):
            head = h // group
            keys, values = (
                np.concatenate(
                    [
                        np.concatenate(
                            [
                                pool[((2 * layer + kind) * kvh + head) * blocks + blk]
                                for blk in tables[b]
                            ]
                        )[:p],
                        new_kv[b * new : (b + 1) * new, head],
                    ]
                )
                for kind, new_kv in ((0, k), (1, v))
            )
            for i in range(new):
                row = b * new + i
                first = max(0, p + i + 1 - (cfg.window(layer) or p + i + 1))
                seen = slice(first, p + i + 1)
                scores = keys[seen] @ q[row, h] * cfg.attention_scale
                w = np.exp(scores - scores.max())
                out[row, h] = (w / w.sum()) @ values[seen]
    return out


@CASES
@pytest.mark.parametrize("fused", [True, False])
def test_attention_reads_the_pool_layout(
    tiny: ModelBundle, past: list[int], new_tokens: int, fused: bool
) -> None:
    cfg = tiny.config
    feeds = step_inputs(tiny, past, new_tokens, seed=7)
    rng = np.random.default_rng(1)
    n = len(past) * new_tokens
    q = rng.standard_normal((n, cfg.num_attention_heads, cfg.head_dim)).astype(np.float32)
    k, v = (
        rng.standard_normal((n, cfg.num_key_value_heads, cfg.head_dim)).astype(np.float32)
        for _ in range(2)
    )
    t = {name: torch.from_numpy(a) for name, a in feeds.items()}
    attention = GatheredPoolAttention(t["kv_pool"], t["block_tables"], t["past_lens"], cfg, fused)
    for layer in range(cfg.num_hidden_layers):
        out = attention(layer, *(torch.from_numpy(a) for a in (q, k, v)))
        expected = reference(feeds, q, k, v, layer, cfg)
        assert np.allclose(out.numpy(), expected, atol=1e-4), f"layer {layer}"


@CASES
def test_attention_forms_agree(
    tiny: ModelBundle, graphs: dict[bool, Path], past: list[int], new_tokens: int
) -> None:
    import onnxruntime as ort

    feeds = step_inputs(tiny, past, new_tokens, seed=len(past) + new_tokens)
    reference = eager(tiny, feeds, fused=False)
    assert np.allclose(eager(tiny, feeds, fused=True)[0], reference[0], atol=1e-4)
    for fused, path in graphs.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits, new_kv = session.run(None, feeds)
        assert np.allclose(logits, reference[0], atol=1e-3), f"fused={fused}"
        assert np.allclose(new_kv, reference[1], atol=1e-4), f"fused={fused}"


def test_fused_graph_uses_group_query_attention(graphs: dict[bool, Path]) -> None:
    import onnx

    ops = {
        fused: {n.op_type for n in onnx.load(str(p), load_external_data=False).graph.node}
        for fused, p in graphs.items()
    }
    assert "GroupQueryAttention" in ops[True]
    assert "GroupQueryAttention" not in ops[False] and "Softmax" in ops[False]


def test_fused_graph_carries_each_layers_window_and_scale(
    tiny: ModelBundle, graphs: dict[bool, Path]
) -> None:
    """One GroupQueryAttention a layer, in layer order: local_window_size is the layer's
    Hugging Face window as it is (both count the query itself), -1 for a full layer."""
    import onnx
    from onnx import helper

    cfg = tiny.config
    nodes = [
        {a.name: helper.get_attribute_value(a) for a in n.attribute}
        for n in onnx.load(str(graphs[True]), load_external_data=False).graph.node
        if n.op_type == "GroupQueryAttention"
    ]
    assert [n["local_window_size"] for n in nodes] == [
        cfg.window(layer) or -1 for layer in range(cfg.num_hidden_layers)
    ]
    assert all(n["scale"] == pytest.approx(cfg.attention_scale) for n in nodes)
