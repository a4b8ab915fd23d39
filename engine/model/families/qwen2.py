"""Qwen2 / Qwen2.5: Llama with biases on q, k and v; a sliding window only where the config
turns it on (use_sliding_window, from layer max_window_layers on)."""

from typing import Any

from engine.model.families.base import Family
from engine.model_source.arch import FULL, SLIDING, ArchConfig


def sliding_from_layer(d: dict[str, Any]) -> dict[str, Any]:
    """Qwen's sliding window: off unless use_sliding_window; then the layers the config's
    layer_types mark, or every layer from max_window_layers on."""
    if not d.get("use_sliding_window") or not d.get("sliding_window"):
        return {}
    layers = int(d["num_hidden_layers"])
    first = int(d.get("max_window_layers", layers))
    types = d.get("layer_types") or [SLIDING if i >= first else FULL for i in range(layers)]
    return {"sliding_window": int(d["sliding_window"]), "layer_types": tuple(types)}


def sliding_written(config: ArchConfig) -> dict[str, Any]:
    if config.sliding_window is None:
        return {"use_sliding_window": False, "sliding_window": None}
    return {
        "use_sliding_window": True,
        "sliding_window": config.sliding_window,
        "layer_types": list(config.layer_types),
        "max_window_layers": config.layer_types.index(SLIDING) if config.layer_types else 0,
    }


def _read(d: dict[str, Any]) -> dict[str, Any]:
    return {"attention_bias": True, **sliding_from_layer(d)}


def _write(config: ArchConfig) -> dict[str, Any]:
    return sliding_written(config)


FAMILY = Family("qwen2", "Qwen2ForCausalLM", read=_read, write=_write)
