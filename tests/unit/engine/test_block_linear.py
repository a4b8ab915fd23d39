"""The block kernel (engine/kernels/block_linear.cpp) on every instruction path this CPU runs,
against its scalar reference bit for bit, and the block weights against their definition.

Each path is its own build (engine.kernels.load_block_linear_variant): on an AVX-512 VNNI
machine both the VNNI and the AVX2 paths run; on an AVX2-only machine the VNNI test is
skipped and says it did not run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.backends import BackendTarget, create_backend
from engine.config import BackendConfig
from engine.kernels import BLOCK_LINEAR_ISAS, cpu_runs, load_block_linear_variant, load_cpu_kernels
from engine.model.block_weights import BLOCK, BlockWeight, pack_scales, to_blocks
from engine.model.linear import BlockLinear, Projection
from engine.model_source import load_model

KERNELS = load_cpu_kernels()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="no C++ toolchain to build kernels")
VECTOR_ISAS = list(BLOCK_LINEAR_ISAS)
# Rows 5 to 8 take one wide tile where 32 registers allow; 24 and 40 columns end on an odd panel.
# Rows in every tiling: one row; one tile of 2-8 (AVX-512); 9 and 13 split evenly into two
# (5 + 4, 7 + 6); 33 into five; 70 in a pass of 64 and one of 6.
SHAPES = [
    (1, 960, 576), (1, 44, 70), (3, 17, 33), (5, 576, 1536), (6, 24, 128), (7, 40, 64),
    (8, 44, 70), (9, 40, 64), (13, 24, 128), (33, 96, 576), (70, 24, 128),
]  # fmt: skip


def _activations(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """Activations with a few large channels, as this model's are, and an all-zero row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    x[:, :3] *= 40.0
    if rows > 1:
        x[1] = 0.0
    return x


def q4_1_blocks(n: int, k: int, seed: int = 0) -> BlockWeight:
    """Blocks on a Q4_1 grid, d and m float16 (k need not be a whole number of blocks)."""
    g = torch.Generator().manual_seed(seed)
    kb = -(-k // BLOCK)
    q = torch.randint(0, 16, (n, kb, BLOCK), generator=g, dtype=torch.uint8)
    q[..., 0], q[..., 1] = 0, 15  # every block spans its grid, as GGUF's quantizer makes it
    d = (torch.rand(n, kb, generator=g) / 50).half().float()
    m = (-torch.rand(n, kb, generator=g) / 5).half().float()
    return BlockWeight(q.view(n, -1)[:, :k].contiguous(), d, m, bits=4, exact=True)


def q4_1_weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """A float weight on a Q4_1 grid (k a whole number of blocks)."""
    return q4_1_blocks(n, k, seed).dequantize()


def _packed(kernels, w: torch.Tensor | BlockWeight):
    blocks = w if isinstance(w, BlockWeight) else to_blocks(w)
    m = None if blocks.m is None else pack_scales(blocks.m)
    packed = kernels.pack_block_weight(blocks.q, blocks.bits)
    return packed, pack_scales(blocks.d), m, blocks.q.shape[0], blocks.bits


def _isa_module(isa: str):
    if not cpu_runs(isa):
        pytest.skip(f"{isa} path not run: this CPU lacks {BLOCK_LINEAR_ISAS[isa][1]}")
    module = load_block_linear_variant(isa)
    assert module.block_linear_isa() == isa
    return module


@needs_kernels
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("rows", "n", "k"), SHAPES)
def test_every_instruction_path_equals_the_scalar_reference(
    isa: str, bits: int, rows: int, n: int, k: int
) -> None:
    """Exact int32 sums and the same float steps: any saturation, lost lane or wrong nibble
    would show as a difference."""
    module = _isa_module(isa)
    g = torch.Generator().manual_seed(rows * n + k)
    w = q4_1_blocks(n, k, seed=rows) if bits == 4 else torch.randn(n, k, generator=g) / 10
    args = _packed(module, w)
    assert args[-1] == bits
    x = _activations(rows, k)
    got = module.block_linear(x, *args)
    assert torch.equal(got, module.block_linear_reference(x, *args))
    if rows > 1:
        assert not got[1].any(), "an all-zero row gives zeros"


@needs_kernels
def test_the_serving_build_runs_the_best_path_this_cpu_has() -> None:
    best = next((isa for isa in ("avx512_vnni", "avx_vnni", "avx2") if cpu_runs(isa)), None)
    if best is None:
        pytest.skip("no AVX2 here")
    assert KERNELS.block_linear_isa() == best


@needs_kernels
@pytest.mark.parametrize(("rows", "n", "k"), SHAPES)
def test_block_linear_is_the_float_product_up_to_int16_activations(
    rows: int, n: int, k: int
) -> None:
    blocks = q4_1_blocks(n, k)
    x = _activations(rows, k)
    got = KERNELS.block_linear(x, *_packed(KERNELS, blocks))
    w = blocks.dequantize()
    want = x.double() @ w.double().t()
    # int16 activations per block of 32: a relative step of 1/32767 of the block's largest
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_q4_1_and_q8_0_grids_are_recovered_exactly() -> None:
    w4 = q4_1_weight(40, 96)
    b4 = to_blocks(w4)
    assert (b4.bits, b4.exact) == (4, True)
    assert torch.equal(b4.dequantize(), w4)
    g = torch.Generator().manual_seed(1)
    q8 = torch.randint(-127, 128, (40, 3, BLOCK), generator=g).float()
    q8[..., 0] = 127
    w8 = ((torch.rand(40, 3, 1, generator=g) / 100).half().float() * q8).view(40, 96)
    b8 = to_blocks(w8)
    assert (b8.bits, b8.exact) == (8, True)
    assert torch.equal(b8.dequantize(), w8)


def test_a_weight_on_no_grid_becomes_close_8_bit_blocks() -> None:
    w = torch.randn(24, 70)
    blocks = to_blocks(w)
    assert (blocks.bits, blocks.exact) == (8, False)
    err = (blocks.dequantize() - w).abs().max() / w.abs().max()
    assert 0 < err < 1 / 127


@needs_kernels
def test_block_linear_rows_do_not_depend_on_their_batch() -> None:
    """Integer sums per row: a sequence's logits are the same alone or in any batch."""
    args = _packed(KERNELS, q4_1_weight(200, 576))
    x = _activations(37, 576)
    batch = KERNELS.block_linear(x, *args)
    for r in (0, 2, 36):
        assert torch.equal(KERNELS.block_linear(x[r : r + 1], *args)[0], batch[r])


@needs_kernels
def test_block_linear_refuses_a_weight_of_another_width() -> None:
    args = _packed(KERNELS, q4_1_weight(16, 128))
    with pytest.raises(RuntimeError, match="columns"):
        KERNELS.block_linear(torch.zeros(2, 300), *args)


@needs_kernels
def test_block_projection_multiplies_by_the_exact_weight() -> None:
    proj = Projection(576, 960)
    w = q4_1_weight(960, 576)
    proj.weight.data = w.clone()
    x = _activations(32, 576)
    kernel = proj.use_kernel("int8-blocks", KERNELS)
    assert isinstance(kernel, BlockLinear) and kernel.exact, "a Q4_1 weight is held exactly"
    assert proj.weight.numel() == 0, "the float weight is freed"
    got = proj(x)
    rel = float((got - F.linear(x, w)).norm() / F.linear(x, w).norm())
    assert rel < 1e-4, rel


def test_torch_int8_without_native_kernels_is_refused(tmp_path: Path) -> None:
    bundle = load_model("dummy:tiny")
    config = BackendConfig(device="cpu", quantization="int8", native_kernels=False)
    target = BackendTarget.resolve(config, max_model_len=256, cache_dir=tmp_path)
    with pytest.raises(RuntimeError, match="native CPU kernels"):
        create_backend("torch", bundle, target)
