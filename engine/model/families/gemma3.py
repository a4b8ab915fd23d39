"""Gemma 3 (text): four norms a layer with gains stored as w - 1, per-head q/k norms, GeGLU
(tanh GELU), embeddings scaled by sqrt(hidden), attention scaled by query_pre_attn_scalar,
and sliding-window layers with their own RoPE base beside every sixth global layer."""

from typing import Any

from engine.model.families.base import Family
from engine.model_source.arch import FULL, SLIDING, ArchConfig, rope_of


def _read(d: dict[str, Any]) -> dict[str, Any]:
    layers = int(d["num_hidden_layers"])
    types = d.get("layer_types")
    if not types:  # transformers 4 configs state the pattern instead
        pattern = int(d.get("sliding_window_pattern", 6))
        types = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(layers)]
    local_theta, local_scaling = rope_of(d, SLIDING)
    if "rope_local_base_freq" in d:
        local_theta = float(d["rope_local_base_freq"])
    if local_scaling is not None:
        raise ValueError("RoPE scaling on sliding layers is not supported")
    return {
        "hidden_act": str(d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"),
        "attention_bias": bool(d.get("attention_bias", False)),
        "qk_norm": "head",
        "sandwich_norms": True,
        "norm_weight_offset": 1.0,
        "scale_embeddings": True,
        "query_pre_attn_scalar": float(d.get("query_pre_attn_scalar") or d["head_dim"]),
        "sliding_window": int(d.get("sliding_window") or 4096),
        "layer_types": tuple(types),
        "rope_local_theta": local_theta,
    }


def _write(config: ArchConfig) -> dict[str, Any]:
    full: dict[str, Any] = {"rope_type": "default", **(config.rope_scaling or {})}
    scalar = config.query_pre_attn_scalar
    if scalar is not None and float(scalar).is_integer():
        scalar = int(scalar)  # transformers checks the type: an int in every published config
    return {
        "hidden_activation": config.hidden_act,
        "attention_bias": config.attention_bias,
        "query_pre_attn_scalar": scalar,
        "sliding_window": config.sliding_window,
        "layer_types": list(config.layer_types),
        "rope_parameters": {
            FULL: {**full, "rope_theta": config.rope_theta},
            SLIDING: {"rope_type": "default", "rope_theta": config.rope_local_theta},
        },
    }


FAMILY = Family("gemma3_text", "Gemma3ForCausalLM", read=_read, write=_write, tie_default=True)
