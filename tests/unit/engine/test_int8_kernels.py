"""The PyTorch backend's int8 pieces: the native kernels against their torch definitions,
and the int8 projection against float."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.backends import BackendOptions, create_backend
from engine.kernels import load_cpu_kernels
from engine.model.llama import Projection
from engine.model_source import load_model

KERNELS = load_cpu_kernels()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="no C++ toolchain to build kernels")
BLOCK = 64  # input channels per activation scale (engine/kernels/int8_linear.cpp)


def _outlier_rows(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """Activations with a few large channels, as this model's are."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    x[:, :3] *= 40.0
    if rows > 1:
        x[1] = 0.0  # an all-zero row must not divide by zero
    return x


def reference_int8_linear(x: torch.Tensor, w: torch.Tensor, w_scales: torch.Tensor) -> torch.Tensor:
    """The kernel's definition: each row's blocks of 64 channels quantized to int8 with one
    symmetric scale each, exact integer dot products per block, scaled back and summed."""
    rows, k = x.shape
    k_pad = -(-k // BLOCK) * BLOCK
    xb = F.pad(x, (0, k_pad - k)).view(rows, -1, BLOCK)  # [rows, blocks, 64]
    amax = xb.abs().amax(-1, keepdim=True)
    codes = torch.round(xb * torch.where(amax > 0, 127.0 / amax, 0.0))
    wb = F.pad(w.double(), (0, k_pad - k)).view(w.shape[0], -1, BLOCK)  # [n, blocks, 64]
    sums = torch.einsum("rbk,nbk->rnb", codes.double(), wb)  # exact: integers below 2^53
    out = (sums * (amax[..., 0] / 127.0).double()[:, None, :]).sum(-1) * w_scales.double()
    return out.float()


@needs_kernels
@pytest.mark.parametrize(
    ("rows", "n", "k"),
    [(1, 960, 576), (1, 44, 70), (3, 17, 33), (5, 576, 1536), (33, 96, 576), (70, 24, 128)],
)
def test_int8_linear_matches_its_definition(rows: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(rows * n + k)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    w_scales = torch.rand(n, generator=g) / 100
    x = _outlier_rows(rows, k)
    got = KERNELS.int8_linear(x, KERNELS.pack_int8_weight(w), w_scales)
    want = reference_int8_linear(x, w, w_scales)
    assert got.shape == (rows, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    if rows > 1:
        assert not got[1].any(), "an all-zero row gives zeros"


@needs_kernels
def test_int8_linear_rows_do_not_depend_on_their_batch() -> None:
    """Integer sums per row: a sequence's logits are the same alone or in any batch (what
    makes greedy output independent of what else runs)."""
    w = torch.randint(-127, 128, (200, 576), dtype=torch.int8)
    packed, w_scales = KERNELS.pack_int8_weight(w), torch.rand(200)
    x = _outlier_rows(37, 576)
    batch = KERNELS.int8_linear(x, packed, w_scales)
    for r in (0, 2, 36):
        assert torch.equal(KERNELS.int8_linear(x[r : r + 1], packed, w_scales)[0], batch[r])


@needs_kernels
def test_int8_linear_refuses_a_weight_of_another_width() -> None:
    packed = KERNELS.pack_int8_weight(torch.zeros(16, 128, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="columns"):
        KERNELS.int8_linear(torch.zeros(2, 300), packed, torch.ones(16))


@needs_kernels
def test_int8_projection_is_close_to_float_and_frees_the_float_weight() -> None:
    proj = Projection(576, 960)
    torch.nn.init.normal_(proj.weight, std=0.02)
    x = _outlier_rows(32, 576)
    want = F.linear(x, proj.weight).detach()
    proj.keep_int8_copy(KERNELS)
    assert proj.weight.numel() == 0, "the float weight is freed"
    got = proj(x)
    rel = float((got - want).norm() / want.norm())
    # 8-bit weights and 8-bit activations per 64 channels: 1.6 % here, where 3 channels of
    # 40x the rest share a block with 61 others
    assert rel < 0.03, rel


def test_torch_int8_without_native_kernels_is_refused() -> None:
    bundle = load_model("dummy:tiny")
    opts = BackendOptions(quantization="int8", native_kernels=False)
    with pytest.raises(RuntimeError, match="native CPU kernels"):
        create_backend("torch", bundle, opts)
