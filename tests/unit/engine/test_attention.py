"""Paged attention: the native decode kernel against the PyTorch reference path."""

from __future__ import annotations

import pytest
import torch

from engine.kernels import load_cpu_kernels
from engine.model.attention import AttentionMetadata, PagedKVCache, paged_attention

KERNELS = load_cpu_kernels()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="no C++ toolchain to build kernels")


def decode_case(
    num_seqs: int, heads: int, kv_heads: int, block_size: int = 4, seed: int = 0, hd: int = 16
) -> tuple[torch.Tensor, PagedKVCache, AttentionMetadata]:
    g = torch.Generator().manual_seed(seed)
    num_blocks = 64
    cache = PagedKVCache(num_blocks, block_size, kv_heads, hd, torch.float32, torch.device("cpu"))
    cache.k.copy_(torch.randn(cache.k.shape, generator=g))
    cache.v.copy_(torch.randn(cache.v.shape, generator=g))
    lens = torch.randint(1, 30, (num_seqs,), generator=g)
    max_blocks = int(-(-lens.max() // block_size))
    perm = torch.randperm(num_blocks, generator=g)  # blocks scattered through the pool
    tables = perm[: num_seqs * max_blocks].view(num_seqs, max_blocks).contiguous()
    mask = (torch.arange(max_blocks * block_size)[None] < lens[:, None]).view(num_seqs, 1, 1, -1)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(0, dtype=torch.long),
        decode_rows=torch.arange(num_seqs),
        decode_block_tables=tables,
        decode_mask=mask,
        prefills=[],
        num_decodes=num_seqs,
        decode_context_lens=lens,
    )
    q = torch.randn(num_seqs, heads, hd, generator=g)
    return q, cache, meta


def run(q: torch.Tensor, cache: PagedKVCache, meta: AttentionMetadata) -> torch.Tensor:
    empty_kv = torch.zeros(0, cache.k.shape[2], cache.k.shape[3])
    return paged_attention(q, empty_kv, empty_kv, cache, meta)


@needs_kernels
@pytest.mark.parametrize(
    ("heads", "kv_heads", "hd"), [(4, 4, 16), (9, 3, 16), (8, 1, 16), (9, 3, 64), (2, 1, 12)]
)
def test_native_decode_matches_the_pytorch_path(heads: int, kv_heads: int, hd: int) -> None:
    q, cache, meta = decode_case(7, heads, kv_heads, hd=hd)
    reference = run(q, cache, meta)
    assert KERNELS is not None
    meta.native_decode = KERNELS.paged_decode_attention
    native = run(q, cache, meta)
    torch.testing.assert_close(native, reference, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_native_decode_rejects_block_ids_outside_the_pool() -> None:
    q, cache, meta = decode_case(3, 4, 2)
    assert KERNELS is not None
    bad = meta.decode_block_tables.clone()
    bad[0, 0] = 10_000
    with pytest.raises(RuntimeError, match="block ids"):
        KERNELS.paged_decode_attention(q, cache.k, cache.v, bad, meta.decode_context_lens, 0.25)
    too_long = meta.decode_context_lens.clone()
    too_long[0] = 10_000
    with pytest.raises(RuntimeError, match="context lengths"):
        KERNELS.paged_decode_attention(
            q, cache.k, cache.v, meta.decode_block_tables, too_long, 0.25
        )
