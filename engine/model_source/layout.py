"""The weight names and shapes of a Hugging Face LlamaForCausalLM, which every source produces."""

from __future__ import annotations

import torch

from engine.model_source.arch import LlamaArchConfig
from engine.model_source.errors import ModelSourceError

# Per-layer weights: HF name suffix -> (rows, cols) as a function of the config, [out, in].
_LAYER_SHAPES = {
    "self_attn.q_proj.weight": lambda c: (c.num_attention_heads * c.head_dim, c.hidden_size),
    "self_attn.k_proj.weight": lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
    "self_attn.v_proj.weight": lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
    "self_attn.o_proj.weight": lambda c: (c.hidden_size, c.num_attention_heads * c.head_dim),
    "mlp.gate_proj.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "mlp.up_proj.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "mlp.down_proj.weight": lambda c: (c.hidden_size, c.intermediate_size),
    "input_layernorm.weight": lambda c: (c.hidden_size,),
    "post_attention_layernorm.weight": lambda c: (c.hidden_size,),
}


def expected_shapes(config: LlamaArchConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the model needs, name -> shape; lm_head only when embeddings are untied."""
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, config.hidden_size),
    }
    for i in range(config.num_hidden_layers):
        for suffix, shape in _LAYER_SHAPES.items():
            shapes[f"model.layers.{i}.{suffix}"] = shape(config)
    shapes["model.norm.weight"] = (config.hidden_size,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, config.hidden_size)
    return shapes


def is_norm(name: str) -> bool:
    """RMSNorm gains (initialised to one), as opposed to projection matrices."""
    return name.endswith("norm.weight")


def check_weights(
    weights: dict[str, torch.Tensor], config: LlamaArchConfig, source: str
) -> dict[str, torch.Tensor]:
    """The expected weights as contiguous float32, in canonical order; ModelSourceError naming
    the first missing or mis-shaped tensor. Extra tensors (e.g. a tied lm_head copy) are dropped."""
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
