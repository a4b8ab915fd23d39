"""The decoder of every family (engine.model.families), written once for paged attention over
flat batches. A family's differences are fields of its ArchConfig: norm placement, q/k norms,
q/k/v biases, the gate's activation, embedding scale, per-layer RoPE base and sliding window,
and a dense or mixture-of-experts feed-forward."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.attention import LayerAttention, PagedAttention
from engine.model.linear import BlockLinear, LinearKernel, Projection
from engine.model.mlp import GatedMLP, MixtureOfExperts
from engine.model.rope import RotaryEmbedding, apply_rope
from engine.model_source.arch import ArchConfig


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
    """Attention block and feed-forward block with fused QKV (and gate/up) projections."""

    def __init__(self, cfg: ArchConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.total_heads = self.num_heads + 2 * self.num_kv_heads
        self.local_rope = cfg.window(index) is not None and cfg.rope_local_theta is not None
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = Projection(h, q + 2 * kv, contiguous_output=True)
        self.qkv_bias = (
            nn.Parameter(torch.zeros(q + 2 * kv), requires_grad=False)
            if cfg.attention_bias
            else None
        )
        self.qk_norm = cfg.qk_norm
        self.q_norm = self.k_norm = None
        if cfg.qk_norm is not None:
            per_head = cfg.qk_norm == "head"
            self.q_norm = RMSNorm(self.head_dim if per_head else q, eps)
            self.k_norm = RMSNorm(self.head_dim if per_head else kv, eps)
        self.o_proj = Projection(q, h)
        self.input_layernorm = RMSNorm(h, eps)
        self.post_attention_layernorm = RMSNorm(h, eps)
        # Sandwich norms (Gemma 3): post_attention_layernorm norms the attention output, and
        # the feed-forward block has a norm before and after.
        self.pre_feedforward_layernorm = RMSNorm(h, eps) if cfg.sandwich_norms else None
        self.post_feedforward_layernorm = RMSNorm(h, eps) if cfg.sandwich_norms else None
        self.mlp: nn.Module = (
            MixtureOfExperts(cfg)
            if cfg.is_moe_layer(index)
            else GatedMLP(h, cfg.intermediate_size, cfg.hidden_act)
        )
        self.kernels: ModuleType | None = None  # engine.kernels: CPU float32 RoPE

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
        qkv = self.qkv_proj(x)  # [n, (q + 2kv heads) * hd]
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias
        if self.qk_norm is not None:
            qkv = self._norm_queries_and_keys(qkv)
        qkv = qkv.view(-1, self.total_heads, self.head_dim)
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
        out = self.o_proj(attn.reshape(-1, self.num_heads * self.head_dim))
        if self.pre_feedforward_layernorm is None:
            h = h + out
            return h + self.mlp(self.post_attention_layernorm(h))
        assert self.post_feedforward_layernorm is not None
        h = h + self.post_attention_layernorm(out)
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))

    def _norm_queries_and_keys(self, qkv: torch.Tensor) -> torch.Tensor:
        """RMSNorm on the query and key parts of qkv [n, (q + 2kv) * hd], per head or over the
        whole projection; the values pass through."""
        assert self.q_norm is not None and self.k_norm is not None
        hd = self.head_dim
        q_width, kv_width = self.num_heads * hd, self.num_kv_heads * hd
        q, k, v = qkv.split((q_width, kv_width, kv_width), dim=-1)
        if self.qk_norm == "head":
            q = self.q_norm(q.reshape(-1, hd)).reshape(-1, q_width)
            k = self.k_norm(k.reshape(-1, hd)).reshape(-1, kv_width)
        else:
            q, k = self.q_norm(q), self.k_norm(k)
        return torch.cat((q, k, v), dim=-1)

    def _native(self, t: torch.Tensor) -> ModuleType | None:
        """The compiled kernels where they apply to ``t`` (CPU float32). Only the eager torch
        backend sets them, never on a model being exported."""
        if self.kernels is None:
            return None
        return self.kernels if t.dtype == torch.float32 and t.device.type == "cpu" else None


class DecoderModel(nn.Module):
    """Embeddings, decoder layers, final norm and LM head over a flat token batch."""

    def __init__(self, cfg: ArchConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Projection(cfg.hidden_size, cfg.vocab_size)
        self.rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
        self.rotary_local = (
            RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_local_theta, None)
            if cfg.rope_local_theta is not None
            else None
        )
        self.embed_scale = cfg.hidden_size**0.5 if cfg.scale_embeddings else None
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
        if self.embed_scale is not None:
            h = h * torch.tensor(self.embed_scale, dtype=h.dtype)
        stacked = None
        if self.decode_stack is not None and isinstance(attention, PagedAttention):
            stacked = attention.decode_stack(self.decode_stack, h, cos, sin)
        if stacked is not None:
            h = stacked
        else:
            local = self.rotary_local(positions) if self.rotary_local is not None else None
            for layer in self.layers:
                assert isinstance(layer, DecoderLayer)
                tables = local if local is not None and layer.local_rope else (cos, sin)
                h = layer(h, *tables, attention)
        # Only sampled rows need the final norm and the (large) vocabulary projection.
        h = self.norm(h[logits_indices])
        logits = self.lm_head(h)
        # No cast when already float32: exported, even a same-type Cast copies the whole
        # [rows, vocab] block (6.5 ms of a 32-sequence ONNX step, measured).
        return logits if logits.dtype == torch.float32 else logits.float()

    def load_hf_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy canonical (Hugging Face) tensors in, fusing QKV and gate/up, and folding the
        family's norm-gain offset into the gains."""
        cfg = self.cfg
        sd: dict[str, torch.Tensor] = {
            "embed_tokens.weight": weights["model.embed_tokens.weight"],
            "norm.weight": weights["model.norm.weight"],
            "lm_head.weight": weights.get("lm_head.weight", weights["model.embed_tokens.weight"]),
        }
        for i in range(cfg.num_hidden_layers):
            p, m = f"model.layers.{i}.", f"layers.{i}."
            attn = p + "self_attn."
            sd[m + "qkv_proj.weight"] = torch.cat(
                [weights[attn + f"{n}_proj.weight"] for n in ("q", "k", "v")]
            )
            if cfg.attention_bias:
                sd[m + "qkv_bias"] = torch.cat(
                    [weights[attn + f"{n}_proj.bias"] for n in ("q", "k", "v")]
                )
            sd[m + "o_proj.weight"] = weights[attn + "o_proj.weight"]
            for name, tensor in weights.items():
                if name.startswith(p) and name.endswith("norm.weight"):
                    local = name[len(p) :].removeprefix("self_attn.")
                    sd[m + local] = tensor
            if cfg.is_moe_layer(i):
                sd[m + "mlp.router"] = weights[p + "mlp.gate.weight"]
                for e in range(cfg.num_experts):
                    _gated_mlp(sd, weights, f"{p}mlp.experts.{e}.", f"{m}mlp.experts.{e}.")
                if cfg.shared_expert_intermediate_size:
                    _gated_mlp(sd, weights, f"{p}mlp.shared_expert.", f"{m}mlp.shared_expert.")
                    sd[m + "mlp.shared_expert_gate"] = weights[p + "mlp.shared_expert_gate.weight"]
            else:
                _gated_mlp(sd, weights, p + "mlp.", m + "mlp.")
        if cfg.norm_weight_offset:
            sd = {
                k: v + cfg.norm_weight_offset if k.endswith("norm.weight") else v
                for k, v in sd.items()
            }
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not m.startswith("rotary")]
        if missing or unexpected:
            raise ValueError(f"weights do not fit the model: missing={missing} extra={unexpected}")
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def use_linear_kernel(self, name: str, native: ModuleType | None = None) -> list[LinearKernel]:
        """Every projection, the LM head and the experts included, multiplies through the
        kernel registered as ``name`` (engine.model.linear); the embedding table, norms,
        routers, attention and KV keep their form, and a weight the LM head shares with the
        embedding table stays."""
        shared = self.embed_tokens.weight
        return [
            module.use_kernel(name, native, keep_plain=module.weight is shared)
            for module in self.modules()
            if isinstance(module, Projection)
        ]

    def use_decode_stack(self, kernels: ModuleType) -> bool:
        """Decode-only eager steps run every layer in one native call (kernels.BlockDecodeStack:
        the same kernels in the same order as the layer loop, without ~17 Python calls a
        layer), where every layer is Llama's own (ArchConfig.plain_llama_layers); returns
        whether it does. Needs the block weights (use_linear_kernel("int8-blocks")) and the
        native kernels."""
        cfg = self.cfg
        if not cfg.plain_llama_layers:
            return False
        stack = kernels.BlockDecodeStack(
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
        )
        for layer in self.layers:
            assert isinstance(layer, DecoderLayer) and isinstance(layer.mlp, GatedMLP)
            projections = (
                layer.qkv_proj,
                layer.o_proj,
                layer.mlp.gate_up_proj,
                layer.mlp.down_proj,
            )
            stack.add_layer(
                *(_block_arguments(p) for p in projections),
                layer.input_layernorm.weight,
                layer.post_attention_layernorm.weight,
            )
        self.decode_stack = stack
        return True

    def use_native_kernels(self, kernels: ModuleType) -> None:
        """RMSNorm, RoPE and SwiGLU through the compiled one-pass kernels (engine.kernels),
        for CPU float32 activations."""
        for module in self.modules():
            if isinstance(module, (RMSNorm, DecoderLayer, GatedMLP)):
                module.kernels = kernels


def _gated_mlp(
    sd: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], source: str, target: str
) -> None:
    sd[target + "gate_up_proj.weight"] = torch.cat(
        [weights[source + f"{n}_proj.weight"] for n in ("gate", "up")]
    )
    sd[target + "down_proj.weight"] = weights[source + "down_proj.weight"]


def _block_arguments(
    projection: Projection,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, int]:
    """A block-weight projection as kernels.BlockDecodeStack takes it: packed, d, m, n, bits."""
    if not isinstance(projection.kernel, BlockLinear):
        raise ValueError("the decode stack needs every projection over weight blocks")
    return projection.kernel.stack_arguments()
