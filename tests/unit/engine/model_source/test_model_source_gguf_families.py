"""GGUF loading beyond llama: qwen2 (q/k/v biases, no Q/K permutation), gemma3 (four norms
stored as 1 + w, q/k norms, window and layer pattern, two RoPE bases) and Llama-MoE (stacked
experts, read as Mixtral). Each tiny file is written from a transformers model; the loaded
model must equal that model, weight for weight and greedy token for greedy token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.api import SamplingParams
from engine.model_source import ModelBundle, ModelSourceError, load_model
from engine.model_source.arch import FULL, SLIDING
from engine.model_source.gguf_source import hf_name
from tests.conftest import make_engine
from tests.unit.engine.model_source.family_ggufs import (
    EXPERTS,
    EXPERTS_USED,
    GEMMA_HEAD_DIM,
    GEMMA_LAYERS,
    GEMMA_WINDOW,
    FamilyGGUF,
    write_family_gguf,
)

ARCHS = ["qwen2", "gemma3", "llama"]
# Prompts longer than Gemma's 8-token window, over the tiny byte-level vocabulary.
PROMPTS = [[1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [1, 100, 7, 200, 9], [1, 77] * 7]
NEW_TOKENS = 12


@pytest.fixture(scope="module", params=ARCHS)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> FamilyGGUF:
    arch = request.param
    return write_family_gguf(arch, tmp_path_factory.mktemp(arch) / f"tiny-{arch}.F32.gguf")


@pytest.fixture(scope="module")
def bundle(family: FamilyGGUF, tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    return load_model(str(family.path), cache_dir=tmp_path_factory.mktemp("cache"))


def _canonical_reference(model: Any) -> dict[str, torch.Tensor]:
    """The reference's weights under canonical names (transformers 5 keeps a mixture's
    experts fused as [experts, 2 * inter, hidden] gate_up and [experts, hidden, inter] down)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.shape[0]):
                out[name.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate[e]
                out[name.replace("gate_up_proj", f"{e}.up_proj.weight")] = up[e]
        elif name.endswith("mlp.experts.down_proj"):
            for e in range(tensor.shape[0]):
                out[name.replace("down_proj", f"{e}.down_proj.weight")] = tensor[e]
        else:
            out[name] = tensor
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight")
    return out


def test_weights_equal_the_model_the_gguf_was_written_from(
    family: FamilyGGUF, bundle: ModelBundle
) -> None:
    reference = _canonical_reference(family.reference)
    assert set(bundle.weights) == set(reference)
    for name, tensor in bundle.weights.items():
        # gemma3's 1 + w round trip in float32 may move the last bit
        assert torch.allclose(tensor, reference[name], rtol=0, atol=1e-6), name


def test_config_fields_from_metadata(family: FamilyGGUF, bundle: ModelBundle) -> None:
    cfg, ref = bundle.config, family.reference.config
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (ref.hidden_size, ref.num_hidden_layers)
    head_dim = getattr(ref, "head_dim", None) or ref.hidden_size // ref.num_attention_heads
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (
        ref.num_attention_heads, ref.num_key_value_heads, head_dim,
    )  # fmt: skip
    # transformers' Gemma tokenizer adds a <mask> token the tiny vocabulary lacks (the real
    # Gemma vocabulary has it): the model's vocabulary is what must match.
    assert cfg.vocab_size == ref.vocab_size <= bundle.tokenizer.vocab_size
    assert cfg.tie_word_embeddings is ref.tie_word_embeddings
    assert cfg.bos_token_id == 1 and cfg.eos_token_ids == (2,)
    if family.arch == "qwen2":
        assert cfg.model_type == "qwen2" and cfg.attention_bias
        assert cfg.sliding_window is None
    elif family.arch == "gemma3":
        assert cfg.model_type == "gemma3_text" and cfg.hidden_act == "gelu_pytorch_tanh"
        assert cfg.qk_norm == "head" and cfg.sandwich_norms and cfg.scale_embeddings
        assert cfg.norm_weight_offset == 1.0
        assert cfg.sliding_window == GEMMA_WINDOW
        assert cfg.layer_types == (SLIDING,) * (GEMMA_LAYERS - 1) + (FULL,)
        assert (cfg.rope_theta, cfg.rope_local_theta) == (1e6, 1e4)
        assert cfg.query_pre_attn_scalar == GEMMA_HEAD_DIM
    else:
        assert cfg.model_type == "mixtral" and cfg.norm_topk_prob
        assert (cfg.num_experts, cfg.num_experts_per_tok) == (EXPERTS, EXPERTS_USED)
        assert cfg.moe_intermediate_size == ref.intermediate_size


def test_greedy_tokens_equal_the_reference_model(family: FamilyGGUF, bundle: ModelBundle) -> None:
    """Through the engine (paged attention, chunked prefill): every greedy token is the
    reference's argmax under teacher forcing."""
    engine = make_engine(bundle, scheduler={"max_num_batched_tokens": 8})
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    for prompt, result in zip(PROMPTS, engine.generate(PROMPTS, greedy), strict=True):
        output = result.completions[0].token_ids
        with torch.inference_mode():
            logits = family.reference(torch.tensor([prompt + output])).logits[0]
        best = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
        assert output == best


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_transformers_loads_the_same_weights_from_the_gguf(arch: str, tmp_path: Path) -> None:
    """transformers reads qwen2 and gemma3 GGUFs itself (not Llama-MoE): same weights."""
    from transformers import AutoModelForCausalLM

    family = write_family_gguf(arch, tmp_path / f"tiny-{arch}.gguf")
    bundle = load_model(str(family.path), cache_dir=tmp_path / "cache")
    hf = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=family.path.name, dtype=torch.float32
    )
    theirs = _canonical_reference(hf)
    assert set(theirs) == set(bundle.weights)
    for name, tensor in bundle.weights.items():
        assert torch.allclose(tensor, theirs[name], rtol=0, atol=1e-6), name
    with torch.inference_mode():
        ids = torch.tensor([PROMPTS[0]])
        assert torch.allclose(hf(ids).logits, family.reference(ids).logits, atol=1e-4)


def test_cached_conversion_loads_back_equal(family: FamilyGGUF, bundle: ModelBundle) -> None:
    cache_dir = Path(bundle.source).parent / "cache-again"
    first = load_model(str(family.path), cache_dir=cache_dir)
    again = load_model(str(family.path), cache_dir=cache_dir)
    assert not first.from_cache and again.from_cache
    assert again.config == first.config
    for name, tensor in first.weights.items():
        assert torch.equal(tensor, again.weights[name]), name


def test_gemma3_tensor_names() -> None:
    assert hf_name("blk.3.ffn_norm.weight", "gemma3") == (
        "model.layers.3.pre_feedforward_layernorm.weight"
    )
    assert hf_name("blk.3.ffn_norm.weight", "llama") == (
        "model.layers.3.post_attention_layernorm.weight"
    )
    assert hf_name("blk.0.post_ffw_norm.weight", "gemma3") == (
        "model.layers.0.post_feedforward_layernorm.weight"
    )
    assert hf_name("blk.0.attn_q.bias", "qwen2") == "model.layers.0.self_attn.q_proj.bias"
    assert hf_name("blk.0.attn_q.bias", "llama") is None


def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "phi.gguf"
    w = gguf.GGUFWriter(str(path), "phi3")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelSourceError) as e:
        load_model(str(path), cache_dir=tmp_path / "cache")
    message = str(e.value)
    assert "\n" not in message
    assert "unsupported architecture 'phi3' (supported: llama, qwen2, gemma3)" in message
