"""Paged attention in plain PyTorch: the reference every compiled backend is checked against."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.onnx.operators import reshape_from_tensor_shape, shape_as_tensor

if TYPE_CHECKING:
    from engine.model_source.arch import ArchConfig


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


class LayerAttention(Protocol):
    """How a decoder layer attends: keeps this step's K/V and returns the attention output."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """q [n, heads, hd], k and v [n, kv_heads, hd] (rotated) -> [n, heads, hd]."""
        ...


def kv_pool_tensor(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | None
) -> torch.Tensor:
    """A zeroed KV pool. On the CPU its memory comes from calloc, which maps fresh zero pages
    that the OS commits only when first written: the pool takes resident memory as its blocks
    are used, not all at start (a 4 GiB pool had made an idle engine 5.4 GB resident)."""
    if device is not None and device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * dtype.itemsize
    return torch.from_numpy(np.zeros(nbytes, dtype=np.uint8)).view(dtype).view(shape)


class PagedKVCache:
    """One layer's K and V pools: [num_blocks, block_size, kv_heads, head_dim] each, and the
    layer's sliding window (None: it attends to the whole context).

    A sliding layer keeps every token's K/V like any other (prefix-cache blocks stay whole and
    shareable across layers); it only reads the window's last keys."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        native_store: Callable[..., None] | None = None,
        window: int | None = None,
    ) -> None:
        """``native_store``: engine.kernels' store_kv (CPU float32), one call for K and V."""
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.k = kv_pool_tensor(shape, dtype, device)
        self.v = kv_pool_tensor(shape, dtype, device)
        self.block_size = block_size
        self.native_store = native_store
        self.window = window

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's K/V [num_tokens, kv_heads, head_dim] at their slots."""
        if self.native_store is not None:
            self.native_store(self.k, self.v, slots, k, v)
            return
        kv_heads, head_dim = k.shape[1:]
        self.k.view(-1, kv_heads, head_dim).index_copy_(0, slots, k)
        self.v.view(-1, kv_heads, head_dim).index_copy_(0, slots, v)

    def gather(self, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of the given blocks: [..., num_blocks * block_size, kv_heads, head_dim]."""
        k, v = self.k[block_ids], self.v[block_ids]  # [..., nb, bs, kvh, hd]
        shape = (*block_ids.shape[:-1], -1, *k.shape[-2:])
        return k.reshape(shape), v.reshape(shape)


def _decode(
    q: torch.Tensor, cache: PagedKVCache, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """One query token per sequence, q [D, heads, hd], against its cached keys."""
    if meta.native_decode is not None:
        tables, lens = meta.decode_block_tables, meta.decode_context_lens
        return meta.native_decode(q, cache.k, cache.v, tables, lens, scale, cache.window or 0)
    kd, vd = cache.gather(meta.decode_block_tables)  # [D, L, kvh, hd]
    mask = meta.decode_mask
    if cache.window is not None and mask is not None:
        key_pos = torch.arange(mask.shape[-1], device=q.device)
        first = (meta.decode_context_lens.to(q.device) - cache.window).view(-1, 1, 1, 1)
        mask = mask & (key_pos >= first)
    od = F.scaled_dot_product_attention(
        q.unsqueeze(2),
        kd.transpose(1, 2),
        vd.transpose(1, 2),
        attn_mask=mask,
        enable_gqa=True,
        scale=scale,
    )  # [D, heads, 1, hd]
    return od.squeeze(2)


def paged_attention(
    q: torch.Tensor,  # [num_tokens, heads, head_dim], already rotated
    k: torch.Tensor,  # [num_tokens, kv_heads, head_dim], already rotated
    v: torch.Tensor,  # [num_tokens, kv_heads, head_dim]
    cache: PagedKVCache,
    meta: AttentionMetadata,
    scale: float | None = None,
) -> torch.Tensor:
    """Write this step's K/V into the pool, then attend over each sequence's blocks (scores
    scaled by ``scale``, head_dim ** -0.5 when None; a sliding layer's within its window)."""
    cache.write(meta.slot_mapping, k, v)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    all_decode = meta.num_decodes == q.shape[0]
    out = torch.empty_like(q)
    if meta.num_decodes:
        od = _decode(q if all_decode else q[meta.decode_rows], cache, meta, scale)
        if all_decode:
            return od  # the common steady state: skip the scatter
        out[meta.decode_rows] = od
    for span in meta.prefills:
        rows = slice(span.token_start, span.token_start + span.num_tokens)
        qs = q[rows].transpose(0, 1).unsqueeze(0)  # [1, heads, n, hd]
        start = span.context_len - span.num_tokens
        window = (
            cache.window if cache.window is not None and cache.window < span.context_len else None
        )
        mask: torch.Tensor | None = None
        if start == 0:
            # Nothing cached before this chunk: attend over its own K/V causally.
            ks, vs = k[rows], v[rows]
        else:
            kb, vb = cache.gather(span.block_ids.unsqueeze(0))
            ks, vs = kb[0, : span.context_len], vb[0, : span.context_len]
        if start or window is not None:
            qpos = torch.arange(start, span.context_len, device=q.device).unsqueeze(1)
            kpos = torch.arange(span.context_len - ks.shape[0], span.context_len, device=q.device)
            mask = kpos.unsqueeze(0) <= qpos  # [n, keys]
            if window is not None:
                mask = mask & (kpos.unsqueeze(0) > qpos - window)
        # Expanding KV heads here keeps SDPA on its flash kernel: with enable_gqa
        # and a causal flag PyTorch's CPU dispatch falls back to the slow math path.
        group = q.shape[1] // k.shape[1]
        os_ = F.scaled_dot_product_attention(
            qs,
            ks.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0),
            vs.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0),
            attn_mask=mask,
            is_causal=mask is None,
            scale=scale,
        )  # [1, heads, n, hd]
        out[rows] = os_[0].transpose(0, 1)
    return out


class PagedAttention:
    """Eager paged attention: each layer writes into and reads from its own pool."""

    def __init__(
        self, caches: list[PagedKVCache], meta: AttentionMetadata, scale: float | None = None
    ) -> None:
        self.caches = caches
        self.meta = meta
        self.scale = scale

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        return paged_attention(q, k, v, self.caches[layer], self.meta, self.scale)

    def decode_stack(
        self, stack: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor | None:
        """h [n, hidden] through every layer by ``stack`` (engine.kernels.BlockDecodeStack) when
        this step decodes only (one token per sequence, native decode attention); else None:
        the layer loop runs."""
        meta = self.meta
        if meta.native_decode is None or meta.num_decodes != h.shape[0]:
            return None
        return stack.forward(
            h,
            cos,
            sin,
            [c.k for c in self.caches],
            [c.v for c in self.caches],
            meta.slot_mapping,
            meta.decode_block_tables,
            meta.decode_context_lens,
        )


class GatheredPoolAttention:
    """Attention for a compiled graph over one resident pool it only reads.

    The pool is one tensor [num_layers * 2 * kv_heads * num_blocks, block_size, hd]: row
    ((2l + kind) * kvh + h) * NB + block holds one block of layer l's keys (kind 0) or
    values (kind 1) for KV head h. One gather by block table then yields [B, kvh, P, hd],
    the layout attention reads, touching only the blocks in use and transposing nothing.
    The batch is B sequences of Q new tokens each (the backend groups decodes, Q = 1, and
    runs prefill chunks one sequence at a time). This step's K/V are attended to directly
    and collected in ``new_kv`` for the backend to write into the pool.

    ``fused`` exports attention as ONNX Runtime's GroupQueryAttention (CPU: one kernel for
    scores, mask, softmax and values, instead of a dozen nodes and copies); without it, as
    plain ONNX ops any provider runs (CUDA's GroupQueryAttention is fp16/bf16 only). Both
    scale scores by the config's attention_scale, and a sliding layer (cfg.window) attends
    to its window's last keys only, as PagedAttention does.

    Head counts and sizes come from the config as plain ints, and the shapes that depend
    on the batch (B, Q, P) are made once per graph and shared by every layer: each size
    read inside a layer would be exported as Shape/Gather/Unsqueeze/Concat nodes, 30
    times over, and ONNX Runtime pays per node on every step.
    """

    def __init__(
        self,
        pool: torch.Tensor,  # [L * 2 * kvh * NB, bs, hd]
        block_tables: torch.Tensor,  # [B, nb] blocks holding each sequence's cached tokens
        past_lens: torch.Tensor,  # [B] tokens already cached per sequence
        cfg: ArchConfig,
        fused: bool,
    ) -> None:
        self.pool = pool
        self.block_tables = block_tables
        self.past_lens = past_lens
        self.fused = fused
        self.kvh, self.hd = cfg.num_key_value_heads, cfg.head_dim
        self.heads = cfg.num_attention_heads
        self.group = self.heads // self.kvh
        self.scale = cfg.attention_scale
        self.windows = [cfg.window(layer) for layer in range(cfg.num_hidden_layers)]
        self.blocks_per_pool = pool.shape[0] // (2 * cfg.num_hidden_layers * self.kvh)
        self.new_kv: list[torch.Tensor] = []
        self._shared: dict[str, torch.Tensor] | None = None

    def _shapes(self, q: torch.Tensor) -> dict[str, torch.Tensor]:
        """What every layer shares: target shapes with the batch's B in them, the pool rows
        of each sequence's blocks per KV head, and the lengths (fused) or the mask."""
        b = shape_as_tensor(self.block_tables)[:1]  # [B]
        kvh, g, hd = self.kvh, self.group, self.hd
        heads_first = torch.arange(kvh).reshape(1, kvh, 1) * self.blocks_per_pool
        shared = {
            "rows": self.block_tables.unsqueeze(1) + heads_first,  # [B, kvh, nb]
            "past": torch.cat([b, torch.tensor([kvh, -1, hd])]),  # [B, kvh, P, hd]
        }
        if self.fused:
            new_len = shape_as_tensor(q)[0] // b[0]  # Q
            past_len = shape_as_tensor(self.block_tables)[1] * shape_as_tensor(self.pool)[1]
            shared["flat_q"] = torch.cat([b, torch.tensor([-1, self.heads * hd])])
            shared["flat_kv"] = torch.cat([b, torch.tensor([-1, kvh * hd])])
            shared["seqlens_k"] = (self.past_lens + new_len - 1).to(torch.int32)
            shared["total_len"] = (past_len + new_len).to(torch.int32)  # the padded P + Q
            return shared
        shared["seq"] = torch.cat([b, torch.tensor([-1, kvh, hd])])  # [B, Q, kvh, hd]
        shared["q"] = torch.cat([b, torch.tensor([-1, kvh, g, hd])])  # [B, Q, kvh, g, hd]
        shared["qt"] = torch.cat([b, torch.tensor([kvh, hd, -1])])  # [B, kvh, hd, g * Q]
        shared["out"] = torch.cat([b, torch.tensor([kvh, g, -1, hd])])  # [B, kvh, g, Q, hd]
        num_past = self.block_tables.shape[1] * self.pool.shape[1]
        num_new = q.shape[0] // self.block_tables.shape[0]
        # One mask per distinct window, shared by its layers (in layer order: a stable export).
        for window in dict.fromkeys(self.windows):
            shared[f"mask-{window}"] = self._additive_mask(num_new, num_past, window)
        return shared

    def _additive_mask(self, num_new: int, num_past: int, window: int | None) -> torch.Tensor:
        # Plain ints here; under tracing they are recorded as the inputs' dynamic sizes.
        # [B, 1, g * Q, P + Q]: cached keys up to past_len, new keys causally; the rows are
        # the query heads of one KV head (g-major), then the Q new tokens.
        allowed = _allowed(self.past_lens, num_past, num_new, window)  # [B, Q, P + Q]
        zero = torch.zeros((), dtype=self.pool.dtype)
        neg = torch.full((), torch.finfo(self.pool.dtype).min, dtype=self.pool.dtype)
        return torch.where(allowed, zero, neg).repeat(1, self.group, 1)[:, None]

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        if self._shared is None:
            self._shared = self._shapes(q)
        s = self._shared
        self.new_kv += [k, v]
        first = 2 * layer * self.kvh * self.blocks_per_pool  # this layer's first K row
        past_k = reshape_from_tensor_shape(self.pool[s["rows"] + first], s["past"])
        values_first = first + self.kvh * self.blocks_per_pool
        past_v = reshape_from_tensor_shape(self.pool[s["rows"] + values_first], s["past"])
        if self.fused:
            out = GroupQueryAttention.apply(
                reshape_from_tensor_shape(q, s["flat_q"]),
                reshape_from_tensor_shape(k, s["flat_kv"]),
                reshape_from_tensor_shape(v, s["flat_kv"]),
                past_k,
                past_v,
                s["seqlens_k"],
                s["total_len"],
                self.heads,
                self.kvh,
                self.windows[layer],
                self.scale,
            )  # [B, Q, heads * hd]
            return out.reshape(-1, self.heads, self.hd)
        new_k = reshape_from_tensor_shape(k, s["seq"]).transpose(1, 2)  # [B, kvh, Q, hd]
        new_v = reshape_from_tensor_shape(v, s["seq"]).transpose(1, 2)
        keys = torch.cat([past_k, new_k], dim=2)  # [B, kvh, P + Q, hd]
        values = torch.cat([past_v, new_v], dim=2)
        # Query heads grouped under their KV head: no copy of K/V per query head. Scores
        # are taken as K @ q^T and then transposed: K laid out [.., hd, P] for q @ K^T
        # would be a strided transpose costing more than the attention matmuls.
        qb = reshape_from_tensor_shape(q, s["q"])  # [B, Q, kvh, g, hd]
        qt = reshape_from_tensor_shape(qb.permute(0, 2, 4, 3, 1), s["qt"])  # [B, kvh, hd, gQ]
        scores = torch.matmul(keys, qt).transpose(2, 3) * self.scale  # [B, kvh, gQ, P + Q]
        probs = torch.softmax(scores + s[f"mask-{self.windows[layer]}"], dim=-1)
        out = reshape_from_tensor_shape(torch.matmul(probs, values), s["out"])  # [B,kvh,g,Q,hd]
        return out.permute(0, 3, 1, 2, 4).reshape(-1, self.heads, self.hd)


def _allowed(
    past_lens: torch.Tensor, num_past: int, num_new: int, window: int | None = None
) -> torch.Tensor:
    """[B, Q, P + Q] True where a new token may attend: cached keys up to each sequence's
    past length, new keys causally; with a ``window``, only keys less than ``window``
    positions back (the query itself and window - 1 before it, as Hugging Face slides)."""
    new = torch.arange(num_new)
    causal = new.unsqueeze(0) <= new.unsqueeze(1)  # [Q, Q] query row, key column
    key = torch.arange(num_past)
    b = past_lens.shape[0]
    past = (key.unsqueeze(0) < past_lens.unsqueeze(1)).unsqueeze(1).expand(b, num_new, -1)
    if window is not None:
        # Key j of the past sits at position j, new token i at past_len + i.
        newest = past_lens.view(-1, 1, 1) + new.view(1, -1, 1)  # [B, Q, 1] query positions
        past = past & (key.view(1, 1, -1) > newest - window)  # [B, Q, P]
        causal = causal & (new.unsqueeze(0) > new.unsqueeze(1) - window)
    return torch.cat([past, causal.expand(b, -1, -1)], dim=2)


class GroupQueryAttention(torch.autograd.Function):
    """ONNX Runtime's com.microsoft GroupQueryAttention over a right-padded past (what the
    export emits), computed here in plain torch with the op's semantics: q [B, Q, H * hd],
    k/v [B, Q, kvh * hd], past [B, kvh, P, hd] of which the first seqlens_k + 1 - Q rows
    per sequence are real, total_len = P + Q. ``window`` is the op's local_window_size (a
    query sees itself and window - 1 keys before it; None: -1, no window) and ``scale`` its
    scale. Checked against ONNX Runtime in the tests."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        seqlens_k: torch.Tensor,
        total_len: torch.Tensor,
        num_heads: int,
        kv_heads: int,
        window: int | None,
        scale: float,
    ) -> torch.Tensor:
        b, num_new, _ = q.shape
        hd = past_k.shape[-1]
        g = num_heads // kv_heads
        past_lens = seqlens_k.long() + 1 - num_new
        keys = torch.cat([past_k, k.view(b, num_new, kv_heads, hd).transpose(1, 2)], dim=2)
        values = torch.cat([past_v, v.view(b, num_new, kv_heads, hd).transpose(1, 2)], dim=2)
        qh = q.view(b, num_new, kv_heads, g, hd).permute(0, 2, 3, 1, 4)  # [B, kvh, g, Q, hd]
        scores = qh @ keys.unsqueeze(2).transpose(-1, -2) * scale  # [B, kvh, g, Q, P + Q]
        allowed = _allowed(past_lens, past_k.shape[2], num_new, window)[:, None, None]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        out = probs @ values.unsqueeze(2)  # [B, kvh, g, Q, hd]
        return out.permute(0, 3, 1, 2, 4).reshape(b, num_new, num_heads * hd)

    @staticmethod
    def symbolic(g: Any, *inputs: Any) -> Any:
        """The ONNX node: the seven tensors, then head counts, window and scale as attributes."""
        *tensors, num_heads, kv_heads, window, scale = inputs
        out, _, _ = g.op(
            "com.microsoft::GroupQueryAttention",
            *tensors,
            num_heads_i=num_heads,
            kv_num_heads_i=kv_heads,
            local_window_size_i=-1 if window is None else window,
            scale_f=scale,
            outputs=3,
        )
        return out
