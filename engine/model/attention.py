"""Paged attention in plain PyTorch: the reference every compiled backend is checked against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PrefillSpan:
    """A sequence feeding several tokens this step (a prompt or a prompt chunk)."""

    token_start: int  # first row in the flat batch
    num_tokens: int
    context_len: int  # tokens with KV after this step (cached prefix + this chunk)
    block_ids: torch.Tensor  # [num_blocks_needed] the blocks covering context_len


@dataclass
class AttentionMetadata:
    """Flat-batch attention inputs, grouped into decodes (one token) and prefills."""

    slot_mapping: torch.Tensor  # [num_tokens] flat slot of each token's K/V
    decode_rows: torch.Tensor  # [num_decodes] rows of the flat batch that decode
    decode_block_tables: torch.Tensor  # [num_decodes, max_blocks]
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, max_blocks * bs] True = attend;
    # None when native_decode reads the context lengths itself
    prefills: list[PrefillSpan]
    num_decodes: int
    decode_context_lens: torch.Tensor  # [num_decodes] int64
    native_decode: Callable[..., torch.Tensor] | None = None
    """engine.kernels' paged_decode_attention when built: reads blocks in place."""


class PagedKVCache:
    """One layer's K and V pools: [num_blocks, block_size, kv_heads, head_dim] each."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's K/V [num_tokens, kv_heads, head_dim] at their slots."""
        kv_heads, head_dim = k.shape[1:]
        self.k.view(-1, kv_heads, head_dim).index_copy_(0, slots, k)
        self.v.view(-1, kv_heads, head_dim).index_copy_(0, slots, v)

    def gather(self, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of the given blocks: [..., num_blocks * block_size, kv_heads, head_dim]."""
        k, v = self.k[block_ids], self.v[block_ids]  # [..., nb, bs, kvh, hd]
        shape = (*block_ids.shape[:-1], -1, *k.shape[-2:])
        return k.reshape(shape), v.reshape(shape)


def _decode(q: torch.Tensor, cache: PagedKVCache, meta: AttentionMetadata) -> torch.Tensor:
    """One query token per sequence, q [D, heads, hd], against its cached keys."""
    if meta.native_decode is not None:
        scale = q.shape[-1] ** -0.5
        tables, lens = meta.decode_block_tables, meta.decode_context_lens
        return meta.native_decode(q, cache.k, cache.v, tables, lens, scale)
    kd, vd = cache.gather(meta.decode_block_tables)  # [D, L, kvh, hd]
    od = F.scaled_dot_product_attention(
        q.unsqueeze(2),
        kd.transpose(1, 2),
        vd.transpose(1, 2),
        attn_mask=meta.decode_mask,
        enable_gqa=True,
    )  # [D, heads, 1, hd]
    return od.squeeze(2)


def paged_attention(
    q: torch.Tensor,  # [num_tokens, heads, head_dim], already rotated
    k: torch.Tensor,  # [num_tokens, kv_heads, head_dim], already rotated
    v: torch.Tensor,  # [num_tokens, kv_heads, head_dim]
    cache: PagedKVCache,
    meta: AttentionMetadata,
) -> torch.Tensor:
    """Write this step's K/V into the pool, then attend over each sequence's blocks."""
    cache.write(meta.slot_mapping, k, v)
    all_decode = meta.num_decodes == q.shape[0]
    out = torch.empty_like(q)
    if meta.num_decodes:
        od = _decode(q if all_decode else q[meta.decode_rows], cache, meta)  # [D, heads, hd]
        if all_decode:
            return od  # the common steady state: skip the scatter
        out[meta.decode_rows] = od
    for span in meta.prefills:
        rows = slice(span.token_start, span.token_start + span.num_tokens)
        qs = q[rows].transpose(0, 1).unsqueeze(0)  # [1, heads, n, hd]
        start = span.context_len - span.num_tokens
        if start == 0:
            # Nothing cached before this chunk: attend over its own K/V causally.
            ks, vs = k[rows], v[rows]
            mask = None
        else:
            kb, vb = cache.gather(span.block_ids.unsqueeze(0))
            ks, vs = kb[0, : span.context_len], vb[0, : span.context_len]
            qpos = torch.arange(start, span.context_len, device=q.device).unsqueeze(1)
            kpos = torch.arange(span.context_len, device=q.device).unsqueeze(0)
            mask = kpos <= qpos  # [n, context_len]
        # Expanding KV heads here keeps SDPA on its flash kernel: with enable_gqa
        # and a causal flag PyTorch's CPU dispatch falls back to the slow math path.
        group = q.shape[1] // k.shape[1]
        os_ = F.scaled_dot_product_attention(
            qs,
            ks.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0),
            vs.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0),
            attn_mask=mask,
            is_causal=mask is None,
        )  # [1, heads, n, hd]
        out[rows] = os_[0].transpose(0, 1)
    return out
