"""Mixtral: Llama attention with a top-2 mixture of SwiGLU experts, the two routing weights
renormalised to sum to one. Its checkpoints name the experts w1 (gate), w3 (up), w2 (down)
under block_sparse_moe."""

from typing import Any

from engine.model.families.base import Family
from engine.model.families.mistral import _read as mistral_window
from engine.model_source.arch import ArchConfig


def _read(d: dict[str, Any]) -> dict[str, Any]:
    return {
        **mistral_window(d),
        "num_experts": int(d["num_local_experts"]),
        "num_experts_per_tok": int(d["num_experts_per_tok"]),
        "moe_intermediate_size": int(d["intermediate_size"]),
        "norm_topk_prob": True,
    }


def _write(config: ArchConfig) -> dict[str, Any]:
    return {
        "intermediate_size": config.moe_intermediate_size,  # Mixtral's experts' width
        "sliding_window": config.sliding_window,
        "num_local_experts": config.num_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
    }


FAMILY = Family(
    "mixtral",
    "MixtralForCausalLM",
    read=_read,
    write=_write,
    weight_names=(
        (r"\.block_sparse_moe\.gate\.", ".mlp.gate."),
        (r"\.block_sparse_moe\.experts\.(\d+)\.w1\.", r".mlp.experts.\1.gate_proj."),
        (r"\.block_sparse_moe\.experts\.(\d+)\.w3\.", r".mlp.experts.\1.up_proj."),
        (r"\.block_sparse_moe\.experts\.(\d+)\.w2\.", r".mlp.experts.\1.down_proj."),
    ),
    checkpoint_names=(
        (r"\.mlp\.gate\.", ".block_sparse_moe.gate."),
        (r"\.mlp\.experts\.(\d+)\.gate_proj\.", r".block_sparse_moe.experts.\1.w1."),
        (r"\.mlp\.experts\.(\d+)\.up_proj\.", r".block_sparse_moe.experts.\1.w3."),
        (r"\.mlp\.experts\.(\d+)\.down_proj\.", r".block_sparse_moe.experts.\1.w2."),
    ),
)
