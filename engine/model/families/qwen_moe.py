"""Qwen2-MoE (q/k/v biases, a shared expert behind a sigmoid gate) and Qwen3-MoE (per-head
q/k norms, no shared expert): top-k routing, renormalised only where norm_topk_prob says."""

from typing import Any

from engine.model.families.base import Family, moe_fields, moe_written
from engine.model.families.qwen2 import sliding_from_layer, sliding_written
from engine.model_source.arch import ArchConfig


def _read_qwen2(d: dict[str, Any]) -> dict[str, Any]:
    return {"attention_bias": True, **moe_fields(d), **sliding_from_layer(d)}


def _read_qwen3(d: dict[str, Any]) -> dict[str, Any]:
    return {"qk_norm": "head", "attention_bias": bool(d.get("attention_bias", False)),
            **moe_fields(d), **sliding_from_layer(d)}  # fmt: skip


def _write(config: ArchConfig) -> dict[str, Any]:
    return {"attention_bias": config.attention_bias, **moe_written(config),
            **sliding_written(config)}  # fmt: skip


QWEN2_MOE = Family("qwen2_moe", "Qwen2MoeForCausalLM", read=_read_qwen2, write=_write)
QWEN3_MOE = Family("qwen3_moe", "Qwen3MoeForCausalLM", read=_read_qwen3, write=_write)
