"""Mistral: Llama with an optional sliding window over every layer (v0.1: 4,096 tokens)."""

from typing import Any

from engine.model.families.base import Family
from engine.model_source.arch import ArchConfig


def _read(d: dict[str, Any]) -> dict[str, Any]:
    window = d.get("sliding_window")
    return {"sliding_window": int(window) if window else None}


def _write(config: ArchConfig) -> dict[str, Any]:
    return {"sliding_window": config.sliding_window}


FAMILY = Family("mistral", "MistralForCausalLM", read=_read, write=_write)
