"""The architecture description every model source produces and every backend reads.

One decoder serves every family (engine/model/decoder.py); a family differs from Llama only in
the fields below the Llama ones, which its file in engine/model/families reads from and
writes to a Hugging Face config.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
QK_NORMS = (None, "head", "projection")
SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class ArchConfig:
    """Shape and numerics of a decoder-only transformer (RMSNorm, RoPE, GQA, gated MLP or
    mixture of experts)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    """Hugging Face style, e.g. {"rope_type": "llama3", "factor": 8.0, ...}."""
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    # How a family differs from Llama (engine/model/families states each family's values).
    model_type: str = "llama"
    hidden_act: str = "silu"
    """The gate's activation: silu (SwiGLU) or gelu_pytorch_tanh (GeGLU, Gemma)."""
    attention_bias: bool = False
    """Biases on the q, k and v projections (Qwen2)."""
    qk_norm: str | None = None
    """RMSNorm on queries and keys before RoPE: per head (Qwen3, Gemma 3) or over the whole
    projection (OLMoE)."""
    sandwich_norms: bool = False
    """Four norms a layer: the attention and feed-forward outputs are normed too (Gemma 3)."""
    norm_weight_offset: float = 0.0
    """Added to every stored RMSNorm gain (Gemma keeps gains as w - 1)."""
    scale_embeddings: bool = False
    """Embeddings multiplied by sqrt(hidden_size) (Gemma)."""
    query_pre_attn_scalar: float | None = None
    """Attention scores scaled by its inverse square root instead of head_dim's (Gemma 3)."""
    sliding_window: int | None = None
    """A sliding layer's query attends to itself and the window - 1 keys before it."""
    layer_types: tuple[str, ...] = ()
    """sliding_attention or full_attention per layer; empty: every layer is full, or every
    layer slides when sliding_window is set (Mistral)."""
    rope_local_theta: float | None = None
    """The RoPE base of sliding layers, where it differs (Gemma 3: 10,000 beside 1,000,000);
    sliding layers take no rope_scaling then."""
    num_experts: int = 0
    """Experts per mixture-of-experts layer; 0 for a dense model."""
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    """Renormalise the chosen experts' router probabilities to sum to one (Mixtral)."""
    shared_expert_intermediate_size: int = 0
    """A shared expert every token runs, scaled by a sigmoid gate (Qwen2-MoE); 0: none."""
    dense_layers: tuple[int, ...] = ()
    """Layers of a mixture-of-experts model that keep a dense MLP."""

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"unsupported hidden_act {self.hidden_act!r}; use one of {ACTIVATIONS}"
            )
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"unsupported qk_norm {self.qk_norm!r}")
        if self.layer_types:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ValueError("layer_types must name one attention type per layer")
            if set(self.layer_types) - {SLIDING, FULL}:
                raise ValueError(f"layer_types may only hold {SLIDING} and {FULL}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError("sliding_window must be a positive number of tokens")
        if SLIDING in self.layer_types and self.sliding_window is None:
            raise ValueError("sliding layers need a sliding_window")
        if self.num_experts:
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                raise ValueError("num_experts_per_tok must lie within 1..num_experts")
            if self.moe_intermediate_size < 1:
                raise ValueError("a mixture-of-experts model needs moe_intermediate_size")

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer``, or None when it attends to its whole context."""
        if self.sliding_window is None:
            return None
        if not self.layer_types:
            return self.sliding_window
        return self.sliding_window if self.layer_types[layer] == SLIDING else None

    def is_moe_layer(self, layer: int) -> bool:
        return self.num_experts > 0 and layer not in self.dense_layers

    @property
    def attention_scale(self) -> float:
        """What attention scores are multiplied by."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def plain_llama_layers(self) -> bool:
        """Whether every layer is Llama's own (pre-norm, SwiGLU, no biases, no q/k norms, full
        attention, dense): what the native decode stack computes."""
        return (
            self.hidden_act == "silu"
            and not (self.attention_bias or self.qk_norm or self.sandwich_norms)
            and self.norm_weight_offset == 0.0
            and self.query_pre_attn_scalar is None
            and all(self.window(i) is None for i in range(self.num_hidden_layers))
            and self.num_experts == 0
        )

    def _mlp_parameters(self, layer: int) -> int:
        h = self.hidden_size
        if not self.is_moe_layer(layer):
            return 3 * h * self.intermediate_size
        experts = self.num_experts * 3 * h * self.moe_intermediate_size + self.num_experts * h
        shared = self.shared_expert_intermediate_size
        return experts + (3 * h * shared + h if shared else 0)

    @property
    def num_parameters(self) -> int:
        """Parameter count implied by the shapes (embeddings counted once when tied)."""
        h, v = self.hidden_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.attention_bias else 0)
        norms = (4 if self.sandwich_norms else 2) * h
        qk = {None: 0, "head": 2 * self.head_dim, "projection": q + kv}[self.qk_norm]
        layers = sum(
            attention + norms + qk + self._mlp_parameters(i) for i in range(self.num_hidden_layers)
        )
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + layers + h + head

    @property
    def num_active_parameters(self) -> int:
        """Parameters one token runs through (a mixture of experts runs only its top k)."""
        if not self.num_experts:
            return self.num_parameters
        idle = self.num_experts - self.num_experts_per_tok
        per_layer = idle * 3 * self.hidden_size * self.moe_intermediate_size
        moe_layers = sum(self.is_moe_layer(i) for i in range(self.num_hidden_layers))
        return self.num_parameters - moe_layers * per_layer

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V one token occupies across all layers."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json the family's Hugging Face ...ForCausalLM would read."""
        from engine.model.families import family_of

        family = family_of(self.model_type)
        d = {k: v for k, v in asdict(self).items() if k in _COMMON}
        eos = list(self.eos_token_ids)
        d["eos_token_id"] = eos[0] if len(eos) == 1 else eos
        d["model_type"] = self.model_type
        d["architectures"] = [family.architecture]
        d["torch_dtype"] = "float32"
        d.update(family.write(self))
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ArchConfig:
        """Read a Hugging Face config.json dict of any supported family (KeyError, TypeError
        or ValueError when it does not describe one)."""
        from engine.model.families import family_of

        family = family_of(str(d.get("model_type", "llama")))
        fields = common_fields(d)
        if "tie_word_embeddings" not in d:
            fields["tie_word_embeddings"] = family.tie_default
        return cls(**fields, model_type=family.model_type, **family.read(d))

    def to_json(self) -> str:
        return json.dumps(self.to_hf_dict(), indent=2, sort_keys=True)


_COMMON = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
    "rope_scaling", "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
)  # fmt: skip


def rope_of(d: dict[str, Any], layer_type: str = FULL) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) for a layer type, from transformers 5's rope_parameters (flat or per
    layer type) or the older rope_theta and rope_scaling keys."""
    params = d.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    if isinstance(params, dict) and "rope_theta" in params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        return float(params["rope_theta"]), None if kind == "default" else scaling
    return float(d.get("rope_theta", 10000.0)), d.get("rope_scaling")


def common_fields(d: dict[str, Any]) -> dict[str, Any]:
    """The Llama fields of a Hugging Face config dict, which every family shares."""
    heads = int(d["num_attention_heads"])
    eos = d.get("eos_token_id")
    eos_ids: tuple[int, ...] = (
        () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
    )
    theta, scaling = rope_of(d)
    return {
        "vocab_size": int(d["vocab_size"]),
        "hidden_size": int(d["hidden_size"]),
        "intermediate_size": int(d.get("intermediate_size") or 0),
        "num_hidden_layers": int(d["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(d.get("num_key_value_heads") or heads),
        "head_dim": int(d.get("head_dim") or d["hidden_size"] // heads),
        "rms_norm_eps": float(d.get("rms_norm_eps", 1e-5)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_position_embeddings": int(d.get("max_position_embeddings", 2048)),
        "tie_word_embeddings": bool(d.get("tie_word_embeddings", False)),
        "bos_token_id": d.get("bos_token_id"),
        "eos_token_ids": eos_ids,
    }
