"""The Llama-family decoder, written once for paged attention over flat batches."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.attention import LayerAttention, PagedAttention
from engine.model.linear import BlockLinear, LinearKernel, Projection
from engine.model.rope import RotaryEmbedding, apply_rope
from engine.model_source.arch import LlamaArchConfig


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
        # engine.kernels' BlockDecodeStack over the layers' weight blocks (use_decode_stack):
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

    def use_linear_kernel(self, name: str, native: ModuleType | None = None) -> list[LinearKernel]:
        """Every projection, the LM head included, multiplies through the kernel registered as
        ``name`` (engine.model.linear); the embedding table, norms, attention and KV keep
        their form, and a weight the LM head shares with the embedding table stays."""
        shared = self.embed_tokens.weight
        return [
            module.use_kernel(name, native, keep_plain=module.weight is shared)
            for module in self.modules()
            if isinstance(module, Projection)
        ]

    def use_decode_stack(self, kernels: ModuleType) -> None:
        """Decode-only eager steps run every layer in one native call (kernels.BlockDecodeStack:
        the same kernels in the same order as the layer loop, without ~17 Python calls a
        layer). Needs the block weights (use_linear_kernel("int8-blocks")) and the native
        kernels."""
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


def _block_arguments(
    projection: Projection,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, int]:
    """A block-weight projection as kernels.BlockDecodeStack takes it: packed, d, m, n, bits."""
    if not isinstance(projection.kernel, BlockLinear):
        raise ValueError("the decode stack needs every projection over weight blocks")
    return projection.kernel.stack_arguments()
