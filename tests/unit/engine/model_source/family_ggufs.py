"""Tiny GGUFs of the non-Llama architectures the loader reads (qwen2, gemma3, Llama-MoE),
written the way llama.cpp's converter writes them from a tiny transformers model: llama's
Q/K rows permuted, Gemma's norm gains stored as 1 + w, a mixture's experts stacked. The
transformers model is kept as the reference the loaded model must equal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.unit.engine.model_source.conftest import add_tiny_tokenizer, llama_cpp_permute

HIDDEN, INTER, HEADS, KV_HEADS = 64, 96, 4, 2
GEMMA_HEAD_DIM, GEMMA_WINDOW, GEMMA_LAYERS = 256, 8, 6  # layer 5 global, the others slide
EXPERTS, EXPERTS_USED = 4, 2

_NAMES = {  # HF layer suffix -> GGUF layer suffix (ffn_norm moves for Gemma 3: see below)
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
}
_GEMMA_NAMES = {
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


@dataclass
class FamilyGGUF:
    path: Path
    arch: str
    """general.architecture of the file."""
    reference: Any
    """The transformers model the file was written from (eval mode, float32)."""
    tensor_names: list[str]


def _model(arch: str, vocab: int) -> Any:
    import transformers

    common = {
        "vocab_size": vocab, "hidden_size": HIDDEN, "intermediate_size": INTER,
        "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": None,
    }  # fmt: skip
    if arch == "qwen2":
        config = transformers.Qwen2Config(
            **common, num_hidden_layers=2, num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS, tie_word_embeddings=False,
        )  # fmt: skip
        model = transformers.Qwen2ForCausalLM(config)
    elif arch == "gemma3":
        config = transformers.Gemma3TextConfig(
            **common, num_hidden_layers=GEMMA_LAYERS, num_attention_heads=2,
            num_key_value_heads=1, head_dim=GEMMA_HEAD_DIM, sliding_window=GEMMA_WINDOW,
            query_pre_attn_scalar=GEMMA_HEAD_DIM, tie_word_embeddings=True,
        )  # fmt: skip
        model = transformers.Gemma3ForCausalLM(config)
    else:
        config = transformers.MixtralConfig(
            **common, num_hidden_layers=2, num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS, num_local_experts=EXPERTS,
            num_experts_per_tok=EXPERTS_USED, tie_word_embeddings=False,
        )  # fmt: skip
        model = transformers.MixtralForCausalLM(config)
    torch.manual_seed(3)
    with torch.no_grad():  # wide weights so logits spread and greedy is not a rounding call
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if arch == "gemma3" else 1.0))
            else:
                p.normal_(0.0, 0.15)
    return model.eval()


def _gguf_tensors(arch: str, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The model's tensors under llama.cpp's names and conventions."""
    out: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        w = tensor.detach().float().numpy().copy()
        if name in _GLOBAL:
            gguf_name = _GLOBAL[name]
        else:
            layer, suffix = name.split(".", 3)[2:]
            blk = f"blk.{layer}."
            if suffix == "mlp.experts.gate_up_proj":  # [E, 2 * inter, hidden], gate first
                out[blk + "ffn_gate_exps.weight"], out[blk + "ffn_up_exps.weight"] = np.split(
                    w, 2, axis=1
                )
                continue
            if suffix == "mlp.experts.down_proj":
                out[blk + "ffn_down_exps.weight"] = w
                continue
            names = {**_NAMES, **_GEMMA_NAMES} if arch == "gemma3" else _NAMES
            gguf_name = blk + names[suffix]
        if arch == "llama" and ".attn_q." in gguf_name:
            w = llama_cpp_permute(w, HEADS)
        elif arch == "llama" and ".attn_k." in gguf_name:
            w = llama_cpp_permute(w, KV_HEADS)
        if arch == "gemma3" and gguf_name.endswith("norm.weight"):
            w = w + 1.0
        out[gguf_name] = np.ascontiguousarray(w)
    return out


def write_family_gguf(arch: str, path: Path) -> FamilyGGUF:
    """Write a tiny `arch` GGUF ("qwen2", "gemma3" or "llama" with experts) at `path`."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny {arch}")
    vocab = add_tiny_tokenizer(w)
    model = _model(arch, vocab)
    c = model.config
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters.get("full_attention", c.rope_parameters)["rope_theta"])
    if arch == "gemma3":
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_sliding_window(c.sliding_window)
    else:
        w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    if arch == "llama":
        w.add_expert_count(c.num_local_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
    tensors = _gguf_tensors(arch, model.state_dict())
    if c.tie_word_embeddings:
        tensors.pop("output.weight", None)
    for name, value in tensors.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return FamilyGGUF(path=path, arch=arch, reference=model, tensor_names=list(tensors))
