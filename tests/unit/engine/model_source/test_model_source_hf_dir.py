"""Hugging Face directories: sharded safetensors, other dtypes, stop ids, validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.model_source import ModelBundle, ModelSourceError, load_model


def _write_hf_dir(bundle: ModelBundle, path: Path, dtype: torch.dtype, shards: int = 2) -> None:
    """Save `bundle` the way Hugging Face checkpoints come: config, shards, tokenizer files."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(bundle.config.to_hf_dict()))
    names = list(bundle.weights)
    for i in range(shards):
        part = {n: bundle.weights[n].to(dtype).contiguous() for n in names[i::shards]}
        save_file(part, str(path / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"))
    bundle.tokenizer.save(path)


def test_sharded_bf16_directory_loads_as_float32(tiny_bundle: ModelBundle, tmp_path: Path):
    _write_hf_dir(tiny_bundle, tmp_path / "tiny-hf", torch.bfloat16)
    bundle = load_model(str(tmp_path / "tiny-hf"), cache_dir=tmp_path / "cache")
    assert bundle.name == "tiny-hf" and not bundle.from_cache
    assert bundle.config == tiny_bundle.config
    for name, tensor in tiny_bundle.weights.items():
        loaded = bundle.weights[name]
        assert loaded.dtype == torch.float32 and loaded.is_contiguous()
        assert torch.equal(loaded, tensor.to(torch.bfloat16).float()), name
    assert not (tmp_path / "cache").exists()  # directories are read in place, never cached


def test_stop_ids_merge_config_generation_and_tokenizer(
    tiny_bundle: ModelBundle, tmp_path: Path
) -> None:
    _write_hf_dir(tiny_bundle, tmp_path, torch.float32, shards=1)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 0]}')
    bundle = load_model(str(tmp_path), cache_dir=tmp_path)
    assert bundle.config.eos_token_ids == (2, 0)
    assert bundle.tokenizer.eos_token_ids == [2, 0]


def test_tied_checkpoint_with_a_stored_lm_head_drops_it(
    tiny_bundle: ModelBundle, tmp_path: Path
) -> None:
    _write_hf_dir(tiny_bundle, tmp_path, torch.float32, shards=1)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    bundle = load_model(str(tmp_path), cache_dir=tmp_path)
    assert "lm_head.weight" not in bundle.weights


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("drop", "missing weight 'model.layers.1.mlp.gate_proj.weight'"),
        ("reshape", "has shape [256, 32], expected [256, 64]"),
        ("truncate", "truncated or corrupt"),
    ],
)
def test_damaged_weights_are_reported(
    tiny_bundle: ModelBundle, tmp_path: Path, damage: str, message: str
) -> None:
    _write_hf_dir(tiny_bundle, tmp_path, torch.float32, shards=1)
    shard = next(tmp_path.glob("*.safetensors"))
    weights = dict(tiny_bundle.weights)
    name = "model.layers.1.mlp.gate_proj.weight"
    if damage == "drop":
        del weights[name]
        save_file(weights, str(shard))
    elif damage == "reshape":
        weights[name] = weights[name][:, :32].contiguous()
        save_file(weights, str(shard))
    else:
        shard.write_bytes(shard.read_bytes()[:500])
    with pytest.raises(ModelSourceError, match=re.escape(message)) as info:
        load_model(str(tmp_path), cache_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_directory_without_weights(tiny_bundle: ModelBundle, tmp_path: Path) -> None:
    _write_hf_dir(tiny_bundle, tmp_path, torch.float32, shards=1)
    next(tmp_path.glob("*.safetensors")).unlink()
    with pytest.raises(ModelSourceError, match=re.escape("no *.safetensors")):
        load_model(str(tmp_path), cache_dir=tmp_path)
