"""Dummy models: the requested shapes, seeded values, the shared SmolLM2 tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.model_source import DUMMY_PRESETS, ModelBundle, ModelSourceError, load_model
from engine.model_source.layout import expected_shapes


def _assert_shapes(bundle: ModelBundle) -> None:
    shapes = {name: tuple(t.shape) for name, t in bundle.weights.items()}
    assert shapes == expected_shapes(bundle.config)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in bundle.weights.values())


def test_tiny_preset(session_cache: Path, default_bundle: ModelBundle) -> None:
    bundle = load_model("dummy:tiny", cache_dir=session_cache)
    _assert_shapes(bundle)
    assert bundle.name == bundle.source == "dummy:tiny" and not bundle.from_cache
    assert bundle.config.vocab_size == bundle.tokenizer.vocab_size == 49152
    assert "lm_head.weight" in bundle.weights
    assert bundle.config.eos_token_ids == (2,) and bundle.config.bos_token_id == 1
    assert torch.all(bundle.weights["model.norm.weight"] == 1)
    std = bundle.weights["model.layers.0.mlp.up_proj.weight"].std().item()
    assert std == pytest.approx(0.02, rel=0.05)


def test_smollm2_preset_matches_the_real_model_shapes(
    session_cache: Path, default_bundle: ModelBundle
) -> None:
    bundle = load_model("dummy:smollm2-135m", cache_dir=session_cache)
    _assert_shapes(bundle)
    real = {n: t.shape for n, t in default_bundle.weights.items()}
    assert {n: t.shape for n, t in bundle.weights.items()} == real
    assert bundle.config.tie_word_embeddings and "lm_head.weight" not in bundle.weights


@pytest.mark.parametrize(
    ("preset", "billions", "layers", "kv_heads"),
    [("llama-1b", 1.236, 16, 8), ("llama-3-8b", 8.030, 32, 8)],
)
def test_large_presets_have_published_sizes(
    preset: str, billions: float, layers: int, kv_heads: int
) -> None:
    # Shapes only: generating these would allocate 5 and 32 GB.
    config = DUMMY_PRESETS[preset]
    assert config.num_parameters / 1e9 == pytest.approx(billions, abs=0.001)
    assert (config.num_hidden_layers, config.num_key_value_heads) == (layers, kv_heads)
    assert config.vocab_size == 128256


def test_json_config_object(session_cache: Path) -> None:
    spec = 'dummy:{"hidden_size": 128, "num_attention_heads": 8, "num_key_value_heads": 4}'
    bundle = load_model(spec, cache_dir=session_cache)
    _assert_shapes(bundle)
    assert bundle.config.head_dim == 16 and bundle.config.num_hidden_layers == 2
    assert bundle.weights["model.layers.1.self_attn.k_proj.weight"].shape == (64, 128)


def test_json_config_file(session_cache: Path, tmp_path: Path) -> None:
    path = tmp_path / "wide.json"
    path.write_text(json.dumps({"intermediate_size": 96, "tie_word_embeddings": True}))
    bundle = load_model(f"dummy:{path}", cache_dir=session_cache)
    _assert_shapes(bundle)
    assert bundle.name == "dummy:wide"
    assert bundle.weights["model.layers.0.mlp.down_proj.weight"].shape == (64, 96)


def test_seed_makes_weights_reproducible(session_cache: Path) -> None:
    a = load_model("dummy:tiny", cache_dir=session_cache, seed=3)
    b = load_model("dummy:tiny", cache_dir=session_cache, seed=3)
    c = load_model("dummy:tiny", cache_dir=session_cache, seed=4)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(a.weights[name], b.weights[name])
    assert not torch.equal(a.weights[name], c.weights[name])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dummy:nope", "unknown dummy model 'nope'"),
        ("dummy:{not json", "not valid JSON"),
        ('dummy:{"vocab_size": 1000}', "smaller than the tokenizer"),
        ('dummy:{"num_attention_heads": 5}', "invalid llama config"),
        ('dummy:{"model_type": "gpt2"}', "unsupported architecture 'gpt2'"),
    ],
)
def test_bad_dummy_specs(
    session_cache: Path, default_bundle: ModelBundle, spec: str, message: str
) -> None:
    # default_bundle first: a dummy spec reads the default tokenizer through the session
    # cache, which cold_bundle needs empty (a run selecting only this test came first).
    with pytest.raises(ModelSourceError, match=message) as info:
        load_model(spec, cache_dir=session_cache)
    assert "\n" not in str(info.value)
