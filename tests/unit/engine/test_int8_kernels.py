"""The PyTorch backend's W8A8 pieces: the native kernels against their torch definitions,
the int8 projection against float, and SmoothQuant folding leaving the float model intact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels import load_cpu_kernels
from engine.model.llama import LlamaModel, Projection
from engine.model.smoothing import fold_smoothing, input_absmax
from engine.model_source import load_model

KERNELS = load_cpu_kernels()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="no C++ toolchain to build kernels")


def _outlier_rows(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """Activations with a few large channels, as this model's are."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    x[:, :3] *= 40.0
    if rows > 1:
        x[1] = 0.0  # an all-zero row must not divide by zero
    return x


@needs_kernels
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_quantize_rows_gives_torch_codes_and_scales(rows: int) -> None:
    x = _outlier_rows(rows, 576)
    q, scales = KERNELS.quantize_rows(x)
    ref_scales = x.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127.0
    assert q.dtype == torch.int8 and scales.shape == (rows, 1)
    torch.testing.assert_close(scales, ref_scales)
    assert torch.equal(q, torch.round(x / ref_scales).to(torch.int8))
    assert int(q.abs().max()) == 127


@needs_kernels
@pytest.mark.parametrize(("rows", "n"), [(1, 960), (3, 49152), (32, 577)])
def test_dequantize_rows_scales_each_row_and_column(rows: int, n: int) -> None:
    g = torch.Generator().manual_seed(1)
    acc = torch.randint(-(2**20), 2**20, (rows, n), generator=g, dtype=torch.int32)
    row_scales, col_scales = torch.rand(rows, 1, generator=g), torch.rand(n, generator=g)
    out = KERNELS.dequantize_rows(acc, row_scales, col_scales)
    torch.testing.assert_close(out, acc.float() * row_scales * col_scales)


@needs_kernels
def test_rms_norm_and_swiglu_kernels_match_torch() -> None:
    x, w = _outlier_rows(7, 576), torch.randn(576)
    torch.testing.assert_close(KERNELS.rms_norm(x, w, 1e-5), F.rms_norm(x, (576,), w, 1e-5))
    gate_up = torch.randn(7, 2 * 1536)
    gate, up = gate_up.split(1536, dim=-1)
    torch.testing.assert_close(KERNELS.silu_and_mul(gate_up), F.silu(gate) * up)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch-ops"])
def test_w8a8_projection_is_close_to_float(native: bool) -> None:
    if native and KERNELS is None:
        pytest.skip("no C++ toolchain to build kernels")
    proj = Projection(576, 960)
    torch.nn.init.normal_(proj.weight, std=0.02)
    x = torch.randn(32, 576)
    want = F.linear(x, proj.weight)
    proj.keep_w8a8_copy(KERNELS if native else None)
    assert proj.weight.numel() == 0, "the float weight is freed"
    got = proj(x)
    rel = float((got - want).norm() / want.norm())
    assert rel < 0.02, rel  # 8-bit rows and columns: about 0.5 % here


@needs_kernels
def test_native_and_torch_op_w8a8_paths_agree() -> None:
    a, b = Projection(576, 192), Projection(576, 192)
    torch.nn.init.normal_(a.weight, std=0.02)
    b.weight.data.copy_(a.weight)
    a.keep_w8a8_copy(KERNELS)
    b.keep_w8a8_copy(None)
    x = _outlier_rows(9, 576)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


def _causal_logits(model: LlamaModel, ids: list[int]) -> torch.Tensor:
    from engine.model.smoothing import CausalAttention

    n = len(ids)
    with torch.inference_mode():
        return model(torch.tensor(ids), torch.arange(n), torch.arange(n), CausalAttention())


def test_smoothing_folds_without_changing_the_float_model() -> None:
    bundle = load_model("dummy:tiny")
    model = LlamaModel(bundle.config, max_positions=256)
    model.load_hf_weights(bundle.weights)
    model.lm_head.weight = model.embed_tokens.weight  # tied, as SmolLM2's are
    ids = list(range(100, 140))
    before = _causal_logits(model, ids)
    stats = input_absmax(model, ids)
    assert set(stats) >= {"lm_head", "layers.0.qkv_proj", "layers.1.down_proj"}
    norm_before = model.layers[0].input_layernorm.weight.clone()
    fold_smoothing(model, stats, alpha=0.5)
    assert not torch.equal(model.layers[0].input_layernorm.weight, norm_before)
    assert model.lm_head.weight is not model.embed_tokens.weight, "the head is untied first"
    torch.testing.assert_close(_causal_logits(model, ids), before, rtol=1e-4, atol=1e-4)


def test_smoothing_leaves_skipped_projections_inputs_alone() -> None:
    bundle = load_model("dummy:tiny")
    model = LlamaModel(bundle.config, max_positions=256)
    model.load_hf_weights(bundle.weights)
    ids = list(range(100, 140))
    before = _causal_logits(model, ids)
    down = [layer.down_proj.weight.clone() for layer in model.layers]
    fold_smoothing(model, input_absmax(model, ids), alpha=0.5, skip=("down_proj",))
    assert all(
        torch.equal(layer.down_proj.weight, w) for layer, w in zip(model.layers, down, strict=True)
    )
    torch.testing.assert_close(_causal_logits(model, ids), before, rtol=1e-4, atol=1e-4)
