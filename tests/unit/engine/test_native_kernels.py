"""The element-wise native CPU kernels (engine/kernels) against their PyTorch definitions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.kernels import load_cpu_kernels
from engine.model.attention import PagedKVCache
from engine.model.linear import Projection
from engine.model.rope import RotaryEmbedding, apply_rope

ROOT = Path(__file__).resolve().parents[3]

KERNELS = load_cpu_kernels()
pytestmark = pytest.mark.skipif(KERNELS is None, reason="no C++ toolchain to build kernels")


def test_rms_norm_matches_torch() -> None:
    x, w = torch.randn(7, 576) * 3, torch.randn(576)
    torch.testing.assert_close(KERNELS.rms_norm(x, w, 1e-5), F.rms_norm(x, (576,), w, 1e-5))


@pytest.mark.parametrize("inter", [1536, 13])  # vector body and scalar tail
def test_swiglu_matches_torch_even_where_exp_overflows(inter: int) -> None:
    gate_up = torch.randn(5, 2 * inter) * 4
    gate_up[0, :6] = torch.tensor([-200.0, -88.0, -30.0, 0.0, 30.0, 90.0])
    gate, up = gate_up.split(inter, dim=-1)
    got = KERNELS.silu_and_mul(gate_up)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, F.silu(gate) * up, rtol=1e-6, atol=1e-6)


def test_rope_in_place_matches_apply_rope_and_leaves_v_alone() -> None:
    heads, kv_heads, hd = 9, 3, 64
    rope = RotaryEmbedding(hd, 256, 10000.0, None)
    positions = torch.tensor([0, 5, 77, 255])
    cos, sin = rope(positions)
    qkv = torch.randn(4, heads + 2 * kv_heads, hd)
    want = apply_rope(qkv[:, : heads + kv_heads], cos, sin, hd)
    v = qkv[:, heads + kv_heads :].clone()
    KERNELS.rope_in_place(qkv, cos, sin, heads + kv_heads)
    torch.testing.assert_close(qkv[:, : heads + kv_heads], want)
    assert torch.equal(qkv[:, heads + kv_heads :], v)


def test_store_kv_writes_strided_views_at_their_slots() -> None:
    native = PagedKVCache(8, 4, 3, 16, torch.float32, torch.device("cpu"), KERNELS.store_kv)
    plain = PagedKVCache(8, 4, 3, 16, torch.float32, torch.device("cpu"))
    qkv = torch.randn(5, 9 + 6, 16)
    k, v = qkv[:, 9:12], qkv[:, 12:]  # views into the projection's output, as the model passes
    slots = torch.tensor([0, 3, 17, 30, 31])
    native.write(slots, k, v)
    plain.write(slots, k, v)
    assert torch.equal(native.k, plain.k) and torch.equal(native.v, plain.v)
    with pytest.raises(RuntimeError, match="outside the pool"):
        native.write(torch.tensor([0, 1, 2, 3, 32]), k, v)


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
# k: the 16-wide body alone, then with the 8-wide tail, then with the scalar tail
@pytest.mark.parametrize(("n", "k"), [(960, 576), (40, 600), (13, 70)])
def test_small_batch_linear_matches_torch(rows: int, n: int, k: int) -> None:
    x, w = torch.randn(rows, k), torch.randn(n, k)
    torch.testing.assert_close(KERNELS.small_batch_linear(x, w), x @ w.t(), rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="rows <= 4"):
        KERNELS.small_batch_linear(torch.randn(5, k), w)


def test_float_projection_decodes_few_rows_from_the_plain_weight() -> None:
    proj = Projection(576, 960)
    torch.nn.init.normal_(proj.weight, std=0.02)
    reference = proj.weight.detach().clone()
    proj.use_kernel("onednn-small-batch", KERNELS)
    for rows in (1, 4, 5, 32):  # the GEMV kernel up to 4 rows, oneDNN beyond
        x = torch.randn(rows, 576)
        torch.testing.assert_close(proj(x), x @ reference.t(), rtol=1e-4, atol=1e-4)


def test_a_build_killed_midway_does_not_hang_the_next_start(tmp_path: Path) -> None:
    """torch waits without end while its build "lock" file exists; one left by a killed build
    (a stopped server, an interrupted test run) must not stop the next start."""
    from torch.utils.cpp_extension import _get_build_directory

    name = "tessera_cpu_kernels"
    built = Path(_get_build_directory(name, verbose=False))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    where = (
        "from torch.utils.cpp_extension import _get_build_directory as g; "
        f"print(g({name!r}, False))"
    )
    copy = Path(subprocess.run([sys.executable, "-c", where], env=env, capture_output=True,
                               text=True, check=True).stdout.strip())  # fmt: skip
    shutil.copytree(built, copy, dirs_exist_ok=True)  # the build, up to date: no compile
    (copy / "lock").touch()
    load = "from engine.kernels import load_cpu_kernels; assert load_cpu_kernels() is not None"
    done = subprocess.run([sys.executable, "-c", load], env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and not (copy / "lock").exists()
