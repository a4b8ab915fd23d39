"""The architecture registry: every model family the decoder serves, by Hugging Face
model_type. A family is one small file stating how it differs from Llama (its config fields
and its checkpoints' weight names); the decoder itself is written once (engine/model/
decoder.py)."""

from __future__ import annotations

from engine.model.families import gemma3, llama, mistral, mixtral, olmoe, qwen2, qwen3, qwen_moe
from engine.model.families.base import Family

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        llama.FAMILY,
        mistral.FAMILY,
        qwen2.FAMILY,
        qwen3.FAMILY,
        gemma3.FAMILY,
        mixtral.FAMILY,
        qwen_moe.QWEN2_MOE,
        qwen_moe.QWEN3_MOE,
        olmoe.FAMILY,
    )
}
# Hugging Face names the Gemma 3 text model both ways (the multimodal checkpoint's text part).
ALIASES = {"gemma3": "gemma3_text"}


def family_of(model_type: str) -> Family:
    """The family of a Hugging Face model_type, or ValueError naming the supported ones."""
    family = FAMILIES.get(ALIASES.get(model_type, model_type))
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unsupported architecture {model_type!r} (supported: {known})")
    return family


__all__ = ["FAMILIES", "Family", "family_of"]
