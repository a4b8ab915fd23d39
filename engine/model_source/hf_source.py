"""Read a Hugging Face model directory of any supported family (engine.model.families):
config.json, *.safetensors (sharded or not), tokenizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.model.families import FAMILIES, family_of
from engine.model_source.arch import ArchConfig
from engine.model_source.errors import ModelSourceError, reason
from engine.model_source.layout import check_weights
from engine.model_source.tokenizer import Tokenizer, read_json_object


def read_hf_config(path: Path) -> ArchConfig:
    """The ArchConfig of a directory's config.json, for any family in engine.model.families."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(f"{path} has no config.json (not a Hugging Face model directory)")
    d = read_json_object(config_file)
    model_type, archs = d.get("model_type"), d.get("architectures") or []
    try:
        family = family_of(str(model_type))
    except ValueError as e:
        what = archs[0] if archs else model_type
        known = ", ".join(sorted(FAMILIES))
        raise ModelSourceError(
            f"{path}: unsupported architecture {what!r} (supported: {known})"
        ) from e
    if archs and family.architecture not in archs:
        raise ModelSourceError(
            f"{path}: unsupported architecture {archs[0]!r} for model_type {model_type!r} "
            f"(expected {family.architecture})"
        )
    try:
        return ArchConfig.from_hf_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelSourceError(f"{config_file}: invalid {model_type} config: {reason(e)}") from e


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every *.safetensors file in the directory (shards are disjoint)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"{path} has no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            weights.update(load_file(file))
        except Exception as e:  # safetensors raises its own error types on bad headers
            raise ModelSourceError(f"{file} is truncated or corrupt: {reason(e)}") from e
    return weights


def read_hf_dir(path: Path) -> tuple[ArchConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, validated float32 weights and tokenizer of a Hugging Face model directory."""
    config = read_hf_config(path)
    if not (path / "tokenizer.json").is_file():
        raise ModelSourceError(f"{path} has no tokenizer.json")
    tokenizer = Tokenizer.from_dir(path)
    # Stop ids are spread over config.json, generation_config.json and the tokenizer's eos
    # token (Llama 3 Instruct: 128001 vs 128009); generation must stop at any of them.
    eos = list(dict.fromkeys([*config.eos_token_ids, *tokenizer.eos_token_ids]))
    tokenizer.eos_token_ids = eos
    config = dataclasses.replace(config, eos_token_ids=tuple(eos))
    weights = check_weights(read_safetensors(path), config, str(path))
    return config, weights, tokenizer
