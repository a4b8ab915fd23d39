"""GGUF loading: weights and config equal transformers' own GGUF load, tensor by tensor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from engine.model_source import ModelBundle, load_model
from engine.model_source.gguf_source import hf_name, model_name, reverse_permute
from engine.model_source.layout import expected_shapes

if TYPE_CHECKING:
    from tests.unit.engine.model_source.conftest import TinyGGUF


def _reference_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def _assert_weights_match(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]):
    tied = "lm_head.weight" not in weights
    expected_names = set(reference) - ({"lm_head.weight"} if tied else set())
    assert set(weights) == expected_names
    for name, tensor in weights.items():
        ref = reference[name]
        assert tensor.dtype == torch.float32 and tensor.is_contiguous(), name
        assert tensor.shape == ref.shape, name
        # Both sides run gguf-py's dequantizer, so they are normally bit-identical; the
        # tolerance only matters if that ever changes (and assert_close is much slower).
        if not torch.equal(tensor, ref):
            assert (tensor - ref.to(torch.float32)).abs().max().item() <= 1e-6, name


def test_default_weights_equal_transformers_gguf_load(
    default_bundle: ModelBundle, hf_reference_model: Any
) -> None:
    _assert_weights_match(default_bundle.weights, _reference_state(hf_reference_model))


def test_cold_conversion_equals_cached_weights(
    cold_bundle: ModelBundle, default_bundle: ModelBundle
) -> None:
    assert cold_bundle.weights.keys() == default_bundle.weights.keys()
    for name, tensor in cold_bundle.weights.items():
        assert torch.equal(tensor, default_bundle.weights[name]), name


def test_default_config_matches_transformers(
    default_bundle: ModelBundle, hf_reference_model: Any
) -> None:
    ref, cfg = hf_reference_model.config, default_bundle.config
    assert cfg.vocab_size == ref.vocab_size == 49152
    assert cfg.hidden_size == ref.hidden_size
    assert cfg.intermediate_size == ref.intermediate_size
    assert cfg.num_hidden_layers == ref.num_hidden_layers == 30
    assert cfg.num_attention_heads == ref.num_attention_heads == 9
    assert cfg.num_key_value_heads == ref.num_key_value_heads == 3
    assert cfg.head_dim == ref.head_dim == 64
    assert cfg.rms_norm_eps == pytest.approx(ref.rms_norm_eps)
    assert cfg.rope_theta == pytest.approx(ref.rope_parameters["rope_theta"])
    assert cfg.max_position_embeddings == ref.max_position_embeddings
    assert cfg.tie_word_embeddings is ref.tie_word_embeddings is True
    assert cfg.bos_token_id == ref.bos_token_id
    assert list(cfg.eos_token_ids) == [ref.eos_token_id]
    assert cfg.num_parameters == sum(t.numel() for t in default_bundle.weights.values())


def test_default_bundle_identity(default_bundle: ModelBundle, default_gguf: Path) -> None:
    assert default_bundle.name == "SmolLM2-135M-Instruct"
    assert default_bundle.source == str(default_gguf.resolve())


def test_tiny_gguf_mixed_quant_types_equal_transformers(
    tiny_gguf: TinyGGUF, tiny_bundle: ModelBundle
) -> None:
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.path.parent), gguf_file=tiny_gguf.path.name, dtype=torch.float32
    )
    assert not tiny_bundle.config.tie_word_embeddings
    _assert_weights_match(tiny_bundle.weights, _reference_state(ref))
    assert set(tiny_gguf.tensor_types.values()) >= {"Q4_0", "Q4_1", "Q6_K", "Q8_0", "F16", "BF16"}


def test_tiny_gguf_recovers_source_weights(tiny_gguf: TinyGGUF, tiny_bundle: ModelBundle) -> None:
    """Independent of transformers: undoing the permutation gives back the HF-layout matrix
    (exactly for F32, within the format's rounding for the quantized ones)."""
    for name, source in tiny_gguf.source_weights.items():
        loaded = tiny_bundle.weights[name].numpy()
        gguf_name = next(g for g, t in tiny_gguf.tensor_types.items() if hf_name(g) == name)
        kind = tiny_gguf.tensor_types[gguf_name]
        tolerance = {"F32": 0.0, "F16": 1e-4, "BF16": 1e-3, "Q8_0": 2e-3}.get(kind, 3e-2)
        np.testing.assert_allclose(loaded, source, atol=tolerance, rtol=0, err_msg=name)


def test_reverse_permute_inverts_llama_cpp_permute(llama_cpp_permute: Any) -> None:
    w = np.arange(4 * 16 * 3, dtype=np.float32).reshape(4 * 16, 3)
    assert np.array_equal(reverse_permute(llama_cpp_permute(w, 4), 4), w)
    assert not np.array_equal(llama_cpp_permute(w, 4), w)


def test_every_expected_weight_has_a_gguf_name(tiny_bundle: ModelBundle) -> None:
    gguf_names = [
        "token_embd.weight",
        "output_norm.weight",
        "output.weight",
        *(f"blk.1.{t}.weight" for t in ("attn_q", "attn_k", "attn_v", "attn_output")),
        *(f"blk.1.{t}.weight" for t in ("ffn_gate", "ffn_up", "ffn_down")),
        "blk.1.attn_norm.weight",
        "blk.1.ffn_norm.weight",
    ]
    mapped = {hf_name(n) for n in gguf_names}
    layer_one = {n for n in expected_shapes(tiny_bundle.config) if ".layers.0." not in n}
    assert mapped == layer_one
    assert hf_name("blk.0.attn_q.bias") is None


def test_model_name_drops_quantization_suffix() -> None:
    assert model_name(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct"
    assert model_name(Path("llama-3.2-1b-instruct-q4_k_m.gguf")) == "llama-3.2-1b-instruct"
    assert model_name(Path("model.gguf")) == "model"


def test_tiny_gguf_config_from_metadata(tiny_bundle: ModelBundle) -> None:
    cfg = tiny_bundle.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (2, 64, 256)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 16)
    assert cfg.vocab_size == tiny_bundle.tokenizer.vocab_size == 263
    assert cfg.max_position_embeddings == 256
    assert cfg.bos_token_id == 1 and cfg.eos_token_ids == (2,)


def test_loading_a_gguf_by_relative_path(
    tiny_gguf: TinyGGUF, session_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_gguf.path.parent)
    bundle = load_model(tiny_gguf.path.name, cache_dir=session_cache)
    assert bundle.source == str(tiny_gguf.path.resolve())
    assert bundle.name == "tiny-llama"
