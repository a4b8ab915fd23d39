"""The Llama-family decoder, written once for paged attention over flat batches."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.attention import LayerAttention, PagedAttention
from engine.model.block_weights import pack_scales, to_blocks
from engine.model.rope import RotaryEmbedding, apply_rope
from engine.model_source.arch import LlamaArchConfig

_CHUNKED_MIN_OUT = 16384
_STORED_TRANSPOSE_MIN_ROWS = 256
_CHUNK_ROWS = 4096
_SMALL_BATCH_MAX_ROWS = 4  # engine/kernels/small_batch_linear.cpp


class PackedBlocks:
    """A weight packed for ``kernels.block_linear``: x [rows, in] -> [rows, out] float32."""

    def __init__(
        self,
        kernels: ModuleType,
        packed: torch.Tensor,
        d: torch.Tensor,
        m: torch.Tensor | None,
        out_features: int,
        bits: int,
    ) -> None:
        self.kernels, self.packed, self.d, self.m = kernels, packed, d, m
        self.out_features, self.bits = out_features, bits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.block_linear(
            x, self.packed, self.d, self.m, self.out_features, self.bits
        )


class Projection(nn.Linear):
    """A bias-free linear layer with the matmul form that is fastest on CPU.

    Where torch has oneDNN, W is reordered once into oneDNN's blocked layout: on 2
    AVX-512 cores that made a step's matmuls 1.7-2.4x faster at every row count
    (bench/results/matmul_orientation-2026-12-01.md). Without it, the orientation is
    chosen by row count, measured on 2 AVX2 cores (bench/results/matmul_orientation.md): for 2-255
    rows, (W @ x^T)^T is 1.2-4x faster than F.linear because MKL splits the large
    output dimension across threads; for one row (single-stream decode) and for
    long prefill chunks, x @ W^T with W^T stored contiguous is fastest.
    """

    weight_t: torch.Tensor | None
    weight_packed: torch.Tensor | None
    weight_bf16: torch.Tensor | None
    blocks: PackedBlocks | None
    small_batch_kernels: ModuleType | None

    def __init__(self, in_features: int, out_features: int, contiguous_output: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.weight_t = None
        self.weight_packed = None
        self.weight_bf16 = None
        self.blocks = None
        self.small_batch_kernels = None
        self.contiguous_output = contiguous_output

    def keep_block_copy(self, kernels: ModuleType) -> bool:
        """Multiply through ``kernels.block_linear`` over the weight's blocks of 32 (its own
        GGUF grid, exactly, where it lies on one: engine/model/block_weights.py); the model
        frees the float weight where nothing else reads it. Returns whether the blocks are
        exact."""
        found = to_blocks(self.weight)
        self.blocks = PackedBlocks(
            kernels,
            kernels.pack_block_weight(found.q, found.bits),
            pack_scales(found.d),
            None if found.m is None else pack_scales(found.m),
            self.out_features,
            found.bits,
        )
        self.weight_t = self.weight_bf16 = None
        return found.exact

    def keep_bfloat16_copy(self) -> None:
        """Multiply with a bfloat16 copy of W (float32 activations in and out).

        On AVX2 the bf16 GEMM streams half the bytes and runs 2.7x faster at 32
        rows; accumulation stays float32 (bench/results/engine_throughput-*.md).
        """
        self.weight_bf16 = self.weight.detach().to(torch.bfloat16)
        self.weight_t = None

    def keep_transposed_copy(self) -> None:
        """Also keep W^T [in, out] contiguous, for one row and long chunks.

        Only for layers that widen (out >= in): for narrowing ones such as the
        MLP's down projection, one-row F.linear already streams faster.
        """
        if self.out_features >= self.in_features:
            self.weight_t = self.weight.detach().t().contiguous()

    def keep_onednn_copy(self, drop_plain: bool, dtype: torch.dtype = torch.float32) -> None:
        """Multiply through oneDNN with W reordered once into its blocked layout (CPU;
        float32, or bfloat16 weights and inputs with float32 out). ``drop_plain`` frees the
        [out, in] weight, which nothing else reads then (a projection tied to the embedding
        table must keep it)."""
        w = self.weight.detach().to(dtype)
        self.weight_packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        self.weight_t = None
        if drop_plain:
            self.weight = nn.Parameter(torch.empty(0), requires_grad=False)

    def decode_from_plain_weight(self, kernels: ModuleType) -> None:
        """Batches of up to 4 rows (decode of a few sequences, bound by reading the weights)
        go through ``kernels.small_batch_linear`` over the plain float32 [out, in] weight,
        which must be kept: it streams 1.6x faster than oneDNN's blocked layout here."""
        self.small_batch_kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [rows, in] -> [rows, out]
        # The block, small-batch and packed forms are set only on the eager torch backend's
        # model, never on one being exported, so they come before the (per-call costly)
        # export check: 240 such checks took 2.8 ms of a 32-sequence step.
        if self.blocks is not None:
            return self.blocks(x)
        if self.small_batch_kernels is not None and x.shape[0] <= _SMALL_BATCH_MAX_ROWS:
            return self.small_batch_kernels.small_batch_linear(x, self.weight)
        if self.weight_packed is not None:
            packed = self.weight_packed
            out = torch.ops.mkldnn._linear_pointwise(
                x.to(packed.dtype).contiguous(), packed, None, "none", [None], ""
            )
            return out.to(x.dtype)
        if torch.onnx.is_in_onnx_export():
            # One MatMul with a constant [in, out] weight: what ONNX Runtime's quantizers
            # and TensorRT recognise (the CPU orientation tricks below are eager-only).
            return torch.matmul(x, self.weight.t())
        if x.device.type != "cpu":
            return F.linear(x, self.weight)
        if self.weight_bf16 is not None:
            return self._bf16(x)
        rows = x.shape[0]
        if rows == 1 or rows >= _STORED_TRANSPOSE_MIN_ROWS:
            if self.weight_t is not None:
                return torch.mm(x, self.weight_t)
            if rows == 1:
                return F.linear(x, self.weight)
        if self.out_features >= _CHUNKED_MIN_OUT:
            return self._chunked(x)
        out = torch.mm(self.weight, x.t()).t()
        # Q/K/V go to SDPA, whose flash kernel needs a unit-stride last dimension.
        return out.contiguous() if self.contiguous_output else out

    def _bf16(self, x: torch.Tensor) -> torch.Tensor:
        assert self.weight_bf16 is not None
        xb = x.to(torch.bfloat16)
        if x.shape[0] == 1:
            return F.linear(xb, self.weight_bf16).to(x.dtype)
        out = torch.mm(self.weight_bf16, xb.t()).t()
        # The cast back must not keep the transposed strides: SDPA's flash kernel
        # needs a unit-stride last dimension (else it silently takes the math path).
        return out.to(x.dtype, memory_format=torch.contiguous_format)

    def _chunked(self, x: torch.Tensor) -> torch.Tensor:
        # A vocabulary-sized weight is multiplied in row slices that stay in cache
        # (measured 1.3x faster for the LM head at 32 rows).
        out = torch.empty(self.out_features, x.shape[0], dtype=x.dtype)  # [out, rows]
        xt = x.t()
        for start in range(0, self.out_features, _CHUNK_ROWS):
            end = min(start + _CHUNK_ROWS, self.out_features)
            torch.mm(self.weight[start:end], xt, out=out[start:end])
        return out.t().contiguous()


def _block_arguments(
    projection: Projection,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, int]:
    """A block-weight projection as kernels.BlockDecodeStack takes it: packed, d, m, n, bits."""
    b = projection.blocks
    if b is None:
        raise ValueError("the decode stack needs every projection over weight blocks")
    return b.packed, b.d, b.m, b.out_features, b.bits


def _native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX-512 BF16, AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class RMSNorm(nn.Module):
    """Root-mean-square norm (one fused kernel; float32 statistics)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps
        self.kernels: ModuleType | None = None  # engine.kernels, for float32 rows on CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Kernels are set only on the eager backend's model (never exported), hence first.
        if self.kernels is not None and x.dtype == torch.float32 and x.device.type == "cpu":
            return self.kernels.rms_norm(x, self.weight, self.eps)
        if torch.onnx.is_in_onnx_export():  # spelled out: the exporter has no rms_norm op
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class DecoderLayer(nn.Module):
    """Pre-norm attention block and SwiGLU MLP, with fused QKV and gate/up projections."""

    def __init__(self, cfg: LlamaArchConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.total_heads = self.num_heads + 2 * self.num_kv_heads
        self.intermediate_size = cfg.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = Projection(cfg.hidden_size, q + 2 * kv, contiguous_output=True)
        self.o_proj = Projection(q, cfg.hidden_size)
        self.gate_up_proj = Projection(cfg.hidden_size, 2 * cfg.intermediate_size)
        self.down_proj = Projection(cfg.intermediate_size, cfg.hidden_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.kernels: ModuleType | None = None  # engine.kernels: CPU float32 RoPE and SwiGLU

    def forward(
        self,
        h: torch.Tensor,  # [num_tokens, hidden]
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention: LayerAttention,
    ) -> torch.Tensor:
        # Shapes from the config's plain ints, never from tensors' sizes: the ONNX export
        # turns every size read into Shape/Gather/Concat nodes, and ONNX Runtime pays
        # for each node on every step (half of a layer's nodes were such arithmetic).
        x = self.input_layernorm(h)
        qkv = self.qkv_proj(x).view(-1, self.total_heads, self.head_dim)  # [n, q+2kv heads, hd]
        # Q and K heads are adjacent: rotate them in one go.
        rotated = self.num_heads + self.num_kv_heads
        kernels = self._native(qkv)
        if kernels is not None:
            kernels.rope_in_place(qkv, cos, sin, rotated)
            q, k, v = qkv.split((self.num_heads, self.num_kv_heads, self.num_kv_heads), dim=1)
        else:
            qk = apply_rope(qkv[:, :rotated], cos, sin, self.head_dim)
            q, k = qk.split((self.num_heads, self.num_kv_heads), dim=1)
            v = qkv[:, rotated:]
        attn = attention(self.index, q, k, v)  # [n, heads, head_dim]
        h = h + self.o_proj(attn.reshape(-1, self.num_heads * self.head_dim))
        x = self.post_attention_layernorm(h)
        return h + self.down_proj(self._swiglu(self.gate_up_proj(x)))

    def _native(self, t: torch.Tensor) -> ModuleType | None:
        """The compiled kernels where they apply to ``t`` (CPU float32). Only the eager torch
        backend sets them, never on a model being exported."""
        if self.kernels is None:
            return None
        return self.kernels if t.dtype == torch.float32 and t.device.type == "cpu" else None

    def _swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:  # [n, 2 * inter] -> [n, inter]
        kernels = self._native(gate_up)
        if kernels is not None:
            return kernels.silu_and_mul(gate_up)
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return F.silu(gate) * up


class LlamaModel(nn.Module):
    """Embeddings, decoder layers, final norm and LM head over a flat token batch."""

    def __init__(self, cfg: LlamaArchConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Projection(cfg.hidden_size, cfg.vocab_size)
        self.rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
        # engine.kernels' BlockDecodeStack over the layers' weight blocks (use_block_weights):
        # every layer of a decode-only eager step in one native call.
        self.decode_stack: object | None = None
        self.requires_grad_(False)

    def forward(
        self,
        token_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        logits_indices: torch.Tensor,  # [num_rows] rows whose next-token logits are needed
        attention: LayerAttention,
    ) -> torch.Tensor:
        """Logits [num_rows, vocab] for the requested rows; ``attention`` keeps every KV."""
        cos, sin = self.rotary(positions)
        h = self.embed_tokens(token_ids)
        stacked = None
        if self.decode_stack is not None and isinstance(attention, PagedAttention):
            stacked = attention.decode_stack(self.decode_stack, h, cos, sin)
        if stacked is not None:
            h = stacked
        else:
            for layer in self.layers:
                h = layer(h, cos, sin, attention)
        # Only sampled rows need the final norm and the (large) vocabulary projection.
        h = self.norm(h[logits_indices])
        logits = self.lm_head(h)
        # No cast when already float32: exported, even a same-type Cast copies the whole
        # [rows, vocab] block (6.5 ms of a 32-sequence ONNX step, measured).
        return logits if logits.dtype == torch.float32 else logits.float()

    def load_hf_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy Hugging Face LlamaForCausalLM tensors in, fusing QKV and gate/up."""
        sd: dict[str, torch.Tensor] = {
            "embed_tokens.weight": weights["model.embed_tokens.weight"],
            "norm.weight": weights["model.norm.weight"],
            "lm_head.weight": weights.get("lm_head.weight", weights["model.embed_tokens.weight"]),
        }
        for i in range(self.cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            sd[f"layers.{i}.qkv_proj.weight"] = torch.cat(
                [weights[p + f"self_attn.{n}_proj.weight"] for n in ("q", "k", "v")]
            )
            sd[f"layers.{i}.gate_up_proj.weight"] = torch.cat(
                [weights[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up")]
            )
            sd[f"layers.{i}.o_proj.weight"] = weights[p + "self_attn.o_proj.weight"]
            sd[f"layers.{i}.down_proj.weight"] = weights[p + "mlp.down_proj.weight"]
            for norm in ("input_layernorm", "post_attention_layernorm"):
                sd[f"layers.{i}.{norm}.weight"] = weights[p + f"{norm}.weight"]
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not m.startswith("rotary")]
        if missing or unexpected:
            raise ValueError(f"weights do not fit the model: missing={missing} extra={unexpected}")
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def use_bfloat16_weights(self) -> None:
        """Matmuls read bfloat16 weights; norms, attention and KV stay float32. Where oneDNN
        has native bf16 the weights are packed in its blocked layout (the plain ones freed,
        but the embedding table's); elsewhere ATen's bf16 GEMM reads a plain copy."""
        packed = torch.backends.mkldnn.is_available() and _native_bf16()
        shared = self.embed_tokens.weight
        for module in self.modules():
            if isinstance(module, Projection) and packed:
                module.keep_onednn_copy(
                    drop_plain=module.weight is not shared, dtype=torch.bfloat16
                )
            elif isinstance(module, Projection):
                module.keep_bfloat16_copy()

    def use_block_weights(self, kernels: ModuleType) -> tuple[int, int]:
        """Every matmul over weight blocks (see Projection.keep_block_copy), the LM head
        included; the embedding table, norms, attention and KV stay float32. Returns how many
        projections hold their weights exactly, and how many there are."""
        shared = self.embed_tokens.weight
        exact = total = 0
        for module in self.modules():
            if isinstance(module, Projection):
                tied = module.weight is shared
                exact += module.keep_block_copy(kernels)
                total += 1
                if not tied:
                    module.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        return exact, total

    def use_decode_stack(self, kernels: ModuleType) -> None:
        """Decode-only eager steps run every layer in one native call (kernels.BlockDecodeStack:
        the same kernels in the same order as the layer loop, without ~17 Python calls a
        layer). Needs the block weights (use_block_weights) and the native kernels."""
        cfg = self.cfg
        stack = kernels.BlockDecodeStack(
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
        )
        for layer in self.layers:
            assert isinstance(layer, DecoderLayer)
            projections = (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj)
            stack.add_layer(
                *(_block_arguments(p) for p in projections),
                layer.input_layernorm.weight,
                layer.post_attention_layernorm.weight,
            )
        self.decode_stack = stack

    def use_native_kernels(self, kernels: ModuleType) -> None:
        """RMSNorm, RoPE and SwiGLU through the compiled one-pass kernels (engine.kernels),
        for CPU float32 activations."""
        for module in self.modules():
            if isinstance(module, (RMSNorm, DecoderLayer)):
                module.kernels = kernels

    def use_onednn_weights(self, small_batch_kernels: ModuleType | None = None) -> None:
        """CPU float32 matmuls through oneDNN's blocked weight layout (see Projection). With
        ``small_batch_kernels`` (engine.kernels) the plain weights stay too, for decode of up
        to 4 rows (Projection.decode_from_plain_weight: twice the weight memory); else they
        are freed, except the one the embedding gather shares."""
        shared = self.embed_tokens.weight
        for module in self.modules():
            if isinstance(module, Projection):
                keep = small_batch_kernels is not None or module.weight is shared
                module.keep_onednn_copy(drop_plain=not keep)
                if small_batch_kernels is not None:
                    module.decode_from_plain_weight(small_batch_kernels)

    def keep_transposed_weights(self) -> None:
        """Trade memory for single-stream CPU decode speed (see Projection)."""
        for module in self.modules():
            if isinstance(module, Projection):
                module.keep_transposed_copy()
