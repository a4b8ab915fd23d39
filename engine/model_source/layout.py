"""The canonical weight names and shapes every source produces: Hugging Face's names as
Llama, Qwen, Gemma and OLMoE checkpoints spell them (a family whose checkpoints differ, such
as Mixtral's, maps its names here through engine.model.families)."""

from __future__ import annotations

import torch

from engine.model.families import family_of
from engine.model_source.arch import ArchConfig
from engine.model_source.errors import ModelSourceError


def _mlp(prefix: str, hidden: int, inter: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.gate_proj.weight": (inter, hidden),
        f"{prefix}.up_proj.weight": (inter, hidden),
        f"{prefix}.down_proj.weight": (hidden, inter),
    }


def layer_shapes(c: ArchConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """One decoder layer's weights, name suffix -> shape ([out, in] for matrices)."""
    h, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
    }
    if c.attention_bias:
        shapes.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                       "self_attn.v_proj.bias": (kv,)})  # fmt: skip
    if c.qk_norm == "head":
        shapes.update({"self_attn.q_norm.weight": (c.head_dim,),
                       "self_attn.k_norm.weight": (c.head_dim,)})  # fmt: skip
    elif c.qk_norm == "projection":
        shapes.update({"self_attn.q_norm.weight": (q,), "self_attn.k_norm.weight": (kv,)})
    norms = ["input_layernorm", "post_attention_layernorm"]
    if c.sandwich_norms:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    shapes.update({f"{n}.weight": (h,) for n in norms})
    if not c.is_moe_layer(layer):
        shapes.update(_mlp("mlp", h, c.intermediate_size))
        return shapes
    shapes["mlp.gate.weight"] = (c.num_experts, h)
    for e in range(c.num_experts):
        shapes.update(_mlp(f"mlp.experts.{e}", h, c.moe_intermediate_size))
    if c.shared_expert_intermediate_size:
        shapes.update(_mlp("mlp.shared_expert", h, c.shared_expert_intermediate_size))
        shapes["mlp.shared_expert_gate.weight"] = (1, h)
    return shapes


def expected_shapes(config: ArchConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the model needs, name -> shape; lm_head only when embeddings are untied."""
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, config.hidden_size),
    }
    for i in range(config.num_hidden_layers):
        for suffix, shape in layer_shapes(config, i).items():
            shapes[f"model.layers.{i}.{suffix}"] = shape
    shapes["model.norm.weight"] = (config.hidden_size,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, config.hidden_size)
    return shapes


def is_norm(name: str) -> bool:
    """RMSNorm gains, as opposed to projection matrices and biases."""
    return name.endswith("norm.weight")


def check_weights(
    weights: dict[str, torch.Tensor], config: ArchConfig, source: str
) -> dict[str, torch.Tensor]:
    """The expected weights under canonical names as contiguous float32, in canonical order;
    ModelSourceError naming the first missing or mis-shaped tensor. Extra tensors (e.g. a
    tied lm_head copy) are dropped."""
    family = family_of(config.model_type)
    if family.weight_names:
        weights = {family.canonical_name(n): w for n, w in weights.items()}
    checked: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(config).items():
        tensor = weights.get(name)
        if tensor is None:
            raise ModelSourceError(f"{source}: missing weight '{name}'")
        if tuple(tensor.shape) != shape:
            raise ModelSourceError(
                f"{source}: weight '{name}' has shape {list(tensor.shape)}, expected {list(shape)}"
            )
        checked[name] = tensor.to(torch.float32).contiguous()
    return checked
