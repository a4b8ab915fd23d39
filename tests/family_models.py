"""Tiny random-weight models of every family, built by transformers itself and saved as
Hugging Face directories next to the SmolLM2 tokenizer: the references the engine's decoder
is checked against (tests/unit/engine/model/test_families.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.model_source import ModelBundle

# Small shapes over the tokenizer's vocabulary; windows short enough that the test prompts
# and chunks cross them.
_SHAPE = {
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 512, "tie_word_embeddings": False,
}  # fmt: skip
WINDOW = 12

FAMILY_CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # family: (transformers config class, model class, config overrides)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": WINDOW}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "sliding_window": WINDOW, "query_pre_attn_scalar": 24, "tie_word_embeddings": True,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
    }),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48, "mlp_only_layers": [1],
    }),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "norm_topk_prob": True,
    }),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              {"num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": False}),
}  # fmt: skip


def build_family_model(
    family: str, path: Path, tokenizer_source: ModelBundle, seed: int = 0
) -> Any:
    """Build the family's tiny model with transformers, save it at ``path`` (config,
    safetensors, the tokenizer of ``tokenizer_source``) and return it in eval mode."""
    import transformers

    config_class, model_class, overrides = FAMILY_CONFIGS[family]
    tok = tokenizer_source.tokenizer
    config = getattr(transformers, config_class)(
        vocab_size=tokenizer_source.config.vocab_size,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_ids[0],
        pad_token_id=None,
        **{**_SHAPE, **overrides},
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).eval()
    # Weights wider than transformers' 0.02 init, so logits spread and greedy choices are not
    # decided by float rounding; norms keep gains near one.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0.0, 0.15)
    model.save_pretrained(path)
    tok.save(path)
    return model
