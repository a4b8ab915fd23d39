"""OLMoE: RMSNorm over the whole query and key projections (not per head) and a top-8 of 64
SwiGLU experts without renormalisation."""

from typing import Any

from engine.model.families.base import Family, moe_fields, moe_written
from engine.model_source.arch import ArchConfig


def _read(d: dict[str, Any]) -> dict[str, Any]:
    if d.get("clip_qkv") is not None:
        raise ValueError("OLMoE's clip_qkv is not supported")
    return {"qk_norm": "projection", **moe_fields(d)}


def _write(config: ArchConfig) -> dict[str, Any]:
    return moe_written(config)


FAMILY = Family("olmoe", "OlmoeForCausalLM", read=_read, write=_write)
