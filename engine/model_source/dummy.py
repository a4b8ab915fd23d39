"""Random ("dummy") weights of any family and shape, for benchmarks and tests without a
checkpoint.

A spec after "dummy:" is a preset name, a JSON object of Hugging Face config keys, or a path
to such a JSON file; keys it leaves out come from the "tiny" preset (a "model_type" key picks
the family, engine.model.families).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.model.families import family_of
from engine.model_source.arch import ArchConfig
from engine.model_source.errors import ModelSourceError, reason
from engine.model_source.layout import expected_shapes, is_norm

# The SmolLM2 tokenizer's size: presets that share it can be driven by real prompts.
SMOLLM2_VOCAB = 49152

PRESETS: dict[str, ArchConfig] = {
    # Two small layers over the real vocabulary; untied so lm_head paths get exercised too.
    "tiny": ArchConfig(
        vocab_size=SMOLLM2_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=2048, tie_word_embeddings=False,
    ),
    "smollm2-135m": ArchConfig(
        vocab_size=SMOLLM2_VOCAB, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
        max_position_embeddings=8192, tie_word_embeddings=True,
    ),
    "llama-1b": ArchConfig(  # Llama 3.2 1B
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
        max_position_embeddings=131072, tie_word_embeddings=True,
    ),
    "llama-3-8b": ArchConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
        max_position_embeddings=8192, tie_word_embeddings=False,
    ),
    # Other families at their published shapes (for speed and memory figures).
    "qwen2.5-0.5b": ArchConfig(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
        rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
        tie_word_embeddings=True, attention_bias=True,
    ),
    "qwen3-0.6b": ArchConfig(
        model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=40960,
        tie_word_embeddings=True, qk_norm="head",
    ),
    "mistral-7b": ArchConfig(  # v0.1, with its 4,096-token sliding window
        model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=32768, sliding_window=4096,
    ),
    "gemma3-270m": ArchConfig(
        model_type="gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048,
        num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
        tie_word_embeddings=True, hidden_act="gelu_pytorch_tanh", qk_norm="head",
        sandwich_norms=True, norm_weight_offset=1.0, scale_embeddings=True,
        query_pre_attn_scalar=256, sliding_window=512, rope_local_theta=10000.0,
        layer_types=tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                          for i in range(18)),
    ),
    # Mixtures of experts, at their published shapes (for speed and memory figures).
    "mixtral-8x7b": ArchConfig(
        model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rope_theta=1e6, max_position_embeddings=32768, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=14336, norm_topk_prob=True,
    ),
    "qwen3-30b-a3b": ArchConfig(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=40960, qk_norm="head",
        num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
    ),
    "olmoe-1b-7b": ArchConfig(
        model_type="olmoe", vocab_size=50304, hidden_size=2048, intermediate_size=1024,
        num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16, head_dim=128,
        max_position_embeddings=4096, qk_norm="projection", num_experts=64,
        num_experts_per_tok=8, moe_intermediate_size=1024,
    ),
    # A mixture of experts that fits this machine many times over: SmolLM2-135M's attention
    # with eight experts a layer, two chosen (214M parameters, 95M active).
    "moe-small": ArchConfig(
        model_type="mixtral", vocab_size=SMOLLM2_VOCAB, hidden_size=576, intermediate_size=384,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        num_experts=8, num_experts_per_tok=2, moe_intermediate_size=384, norm_topk_prob=True,
    ),
}  # fmt: skip


def dummy_config(spec: str) -> tuple[str, ArchConfig]:
    """(display name, config) for the part of a model spec after "dummy:"."""
    spec = spec.strip()
    if spec in PRESETS:
        return f"dummy:{spec}", PRESETS[spec]
    if spec.startswith("{"):
        return "dummy:custom", _config_from_json(spec, "dummy JSON config")
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ModelSourceError(f"cannot read dummy config {path}: {reason(e)}") from e
        return f"dummy:{path.stem}", _config_from_json(text, str(path))
    presets = ", ".join(PRESETS)
    raise ModelSourceError(
        f"unknown dummy model {spec!r}: use a preset ({presets}), a JSON object or a JSON file"
    )


def _config_from_json(text: str, what: str) -> ArchConfig:
    try:
        overrides: Any = json.loads(text)
    except ValueError as e:
        raise ModelSourceError(f"{what} is not valid JSON: {reason(e)}") from e
    if not isinstance(overrides, dict):
        raise ModelSourceError(f"{what} must be a JSON object of Hugging Face config keys")
    model_type = str(overrides.get("model_type", "llama"))
    try:
        family_of(model_type)
    except ValueError as e:
        raise ModelSourceError(f"{what}: {reason(e)}") from e
    base = PRESETS["tiny"].to_hf_dict()
    del base["head_dim"]  # derive it from the (possibly overridden) hidden size and heads
    base["architectures"] = [family_of(model_type).architecture]
    try:
        return ArchConfig.from_hf_dict({**base, **overrides})
    except (KeyError, TypeError, ValueError) as e:
        raise ModelSourceError(f"{what}: invalid {model_type} config: {reason(e)}") from e


def random_weights(config: ArchConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of the config's shapes: N(0, 0.02) matrices and biases, RMSNorm gains of one.

    Filled in place from one seeded generator, so a seed always gives the same model.
    """
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(config).items():
        tensor = torch.empty(shape, dtype=torch.float32)
        if is_norm(name):
            tensor.fill_(1.0 - config.norm_weight_offset)
        else:
            tensor.normal_(0.0, 0.02, generator=generator)
        weights[name] = tensor
    return weights
