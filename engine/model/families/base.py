"""What a model family states: how to read its differences from Llama out of a Hugging Face
config.json and write them back, and the names its checkpoints give weights that the
canonical names (engine/model_source/layout.py) call otherwise."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.model_source.arch import ArchConfig


@dataclass(frozen=True)
class Family:
    model_type: str
    """Hugging Face's model_type (config.json)."""
    architecture: str
    """Hugging Face's ...ForCausalLM class."""
    read: Callable[[dict[str, Any]], dict[str, Any]]
    """A config.json dict -> the ArchConfig fields this family sets beyond Llama's."""
    write: Callable[[ArchConfig], dict[str, Any]]
    """The config.json keys that carry those fields back."""
    tie_default: bool = False
    """tie_word_embeddings when config.json leaves it out."""
    weight_names: tuple[tuple[str, str], ...] = ()
    """(checkpoint pattern, canonical replacement) pairs: names this family's checkpoints
    give weights that the canonical layout names otherwise."""
    checkpoint_names: tuple[tuple[str, str], ...] = ()
    """The same renames the other way: (canonical pattern, checkpoint replacement)."""

    def canonical_name(self, name: str) -> str:
        for pattern, canonical in self.weight_names:
            name = re.sub(pattern, canonical, name)
        return name

    def checkpoint_name(self, name: str) -> str:
        """The name this family's Hugging Face checkpoints give a canonical weight."""
        for pattern, theirs in self.checkpoint_names:
            name = re.sub(pattern, theirs, name)
        return name


def nothing(d: dict[str, Any]) -> dict[str, Any]:
    return {}


def nothing_written(config: ArchConfig) -> dict[str, Any]:
    return {}


def sliding_layer_types(d: dict[str, Any], window: int | None) -> tuple[str, ...]:
    """The per-layer attention types a config states (layer_types), or () to let the window
    (or its absence) apply to every layer."""
    types = d.get("layer_types")
    if window is None or not types:
        return ()
    return tuple(str(t) for t in types)


def moe_fields(d: dict[str, Any]) -> dict[str, Any]:
    """The mixture-of-experts fields most families share (Qwen-MoE and OLMoE spellings; newer
    transformers write num_local_experts where the published configs say num_experts)."""
    layers = int(d["num_hidden_layers"])
    step = int(d.get("decoder_sparse_step") or 1)
    only_dense = {int(i) for i in d.get("mlp_only_layers") or ()}
    dense = tuple(i for i in range(layers) if i in only_dense or (i + 1) % step)
    return {
        "num_experts": int(d.get("num_experts") or d["num_local_experts"]),
        "num_experts_per_tok": int(d["num_experts_per_tok"]),
        "moe_intermediate_size": int(d.get("moe_intermediate_size") or d["intermediate_size"]),
        "norm_topk_prob": bool(d.get("norm_topk_prob", False)),
        "shared_expert_intermediate_size": int(d.get("shared_expert_intermediate_size") or 0),
        "dense_layers": dense,
    }


def moe_written(config: ArchConfig) -> dict[str, Any]:
    return {
        "num_experts": config.num_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
        "moe_intermediate_size": config.moe_intermediate_size,
        "norm_topk_prob": config.norm_topk_prob,
        "shared_expert_intermediate_size": config.shared_expert_intermediate_size,
        "mlp_only_layers": list(config.dense_layers),
        "decoder_sparse_step": 1,
    }
