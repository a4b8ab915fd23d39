"""Qwen3: Llama with an RMSNorm on each query and key head before RoPE, no biases."""

from typing import Any

from engine.model.families.base import Family
from engine.model.families.qwen2 import sliding_from_layer, sliding_written
from engine.model_source.arch import ArchConfig


def _read(d: dict[str, Any]) -> dict[str, Any]:
    return {"qk_norm": "head", "attention_bias": bool(d.get("attention_bias", False)),
            **sliding_from_layer(d)}  # fmt: skip


def _write(config: ArchConfig) -> dict[str, Any]:
    return {"attention_bias": config.attention_bias, **sliding_written(config)}


FAMILY = Family("qwen3", "Qwen3ForCausalLM", read=_read, write=_write)
