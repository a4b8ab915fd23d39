"""Read a llama.cpp GGUF file (llama, Llama-MoE, qwen2, gemma3): its config, its weights
dequantized to float32, its tokenizer.

Weights come out under the canonical Hugging Face names (engine/model_source/layout.py) and
conventions, so the result equals what transformers loads from the same file: llama's Q/K row
permutation undone, Gemma's norm gains stored as 1 + w given back as w, stacked expert tensors
split per expert.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch

from engine.model_source.arch import ArchConfig
from engine.model_source.errors import ModelSourceError, reason
from engine.model_source.gguf_config import ROPE_FREQS, meta, read_config
from engine.model_source.layout import check_weights, is_norm
from engine.model_source.tokenizer import Tokenizer
from engine.progress import Progress

GGUF_MAGIC = b"GGUF"

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",  # the router of a mixture of experts
}
# ffn_norm is the one norm before the MLP in Llama and Qwen2, but the third of Gemma 3's four.
_ARCH_LAYER_NAMES = {
    "llama": {"ffn_norm": "post_attention_layernorm"},
    "qwen2": {"ffn_norm": "post_attention_layernorm"},
    "gemma3": {
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# A mixture of experts' weights, stacked: [experts, out, in] once read.
_EXPERT_TENSOR = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight")
# Architectures with q/k/v biases: elsewhere a bias tensor is not part of the model.
_BIASED = frozenset({"qwen2"})
# llama.cpp's converter stores the norm gains of these architectures as 1 + w.
_NORMS_PLUS_ONE = frozenset({"gemma3"})
_QUANT_SUFFIX = re.compile(r"[.-](I?Q\d\w*|[BF]F?16|F32)$", re.IGNORECASE)


def model_name(path: Path) -> str:
    """A display name from the file name, quantization suffix dropped:
    "SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct"."""
    return _QUANT_SUFFIX.sub("", path.stem) or path.stem


def hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """The Hugging Face name of a GGUF tensor of architecture `arch`, or None when it has no
    single counterpart (stacked experts: see split_experts)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_TENSOR.fullmatch(gguf_name)
    if m is None:
        return None
    layer, short, kind = m.groups()
    if kind == "bias" and arch not in _BIASED:
        return None
    names = _ARCH_LAYER_NAMES.get(arch, {})
    hf = names.get(short) or _LAYER_NAMES.get(short)
    return None if hf is None else f"model.layers.{layer}.{hf}.{kind}"


def split_experts(gguf_name: str, w: np.ndarray) -> dict[str, np.ndarray]:
    """A stacked expert tensor [experts, out, in] as one HF weight per expert; {} when
    `gguf_name` is not one."""
    m = _EXPERT_TENSOR.fullmatch(gguf_name)
    if m is None:
        return {}
    layer, proj = m.groups()
    return {f"model.layers.{layer}.mlp.experts.{e}.{proj}_proj.weight": w[e] for e in range(len(w))}


def reverse_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: it interleaves each head's two rotary halves; HF keeps
    them as contiguous halves. Same as transformers' LlamaTensorProcessor."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def open_gguf(path: Path) -> Any:
    """A gguf.GGUFReader over `path`; ModelSourceError when it is not a readable GGUF file."""
    import gguf  # imported here: the warm (cached) path never needs it

    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelSourceError(f"{path} is not a GGUF file (no GGUF magic bytes)")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises assorted errors on truncated or corrupt files
        raise ModelSourceError(f"{path} is truncated or corrupt: {reason(e)}") from e


def read_weights(
    reader: Any, config: ArchConfig, path: Path, progress: Progress | None = None
) -> dict[str, torch.Tensor]:
    """All tensors dequantized to float32 [out, in] under canonical HF names and conventions."""
    from gguf.quants import dequantize

    arch = meta(reader, "general.architecture")
    weights: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if progress is not None:
            progress.advance()
        if t.name == ROPE_FREQS:  # already folded into config.rope_scaling
            continue
        name = hf_name(t.name, arch)
        if name is None and _EXPERT_TENSOR.fullmatch(t.name) is None:
            raise ModelSourceError(f"{path}: unsupported tensor '{t.name}' in a {arch} GGUF")
        try:
            w = dequantize(t.data, t.tensor_type)
        except Exception as e:  # unknown quant types raise NotImplementedError
            raise ModelSourceError(f"{path}: cannot dequantize '{t.name}': {reason(e)}") from e
        if arch == "llama" and ".attn_q." in t.name:
            w = reverse_permute(w, config.num_attention_heads)
        elif arch == "llama" and ".attn_k." in t.name:
            w = reverse_permute(w, config.num_key_value_heads)
        if arch in _NORMS_PLUS_ONE and name is not None and is_norm(name):
            w = w - np.float32(1.0)
        # F32 tensors come back as read-only views of the memory-mapped file: copy those.
        own = w.flags.writeable and not isinstance(w, np.memmap)
        w = w if own else np.array(w)
        parts = {name: w} if name is not None else split_experts(t.name, w)
        for part, value in parts.items():
            weights[part] = torch.from_numpy(np.ascontiguousarray(value))
    return check_weights(weights, config, str(path))


def read_tokenizer(path: Path, config: ArchConfig) -> Tokenizer:
    """Convert the GGUF's tokenizer with transformers (once; the cache keeps tokenizer.json)."""
    try:
        # Heavy imports, confined to the cold path; transformers' own bars stay off (the
        # conversion reports its progress itself).
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf = AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, local_files_only=True
        )
        backend = tokenizers.Tokenizer.from_str(hf.backend_tokenizer.to_str())
        special = {k: str(v) for k, v in hf.special_tokens_map.items()}
        template = hf.chat_template if isinstance(hf.chat_template, str) else None
    except Exception as e:
        raise ModelSourceError(f"{path}: cannot convert the GGUF tokenizer: {reason(e)}") from e
    return Tokenizer(
        backend,
        special_tokens=special,
        chat_template=template,
        eos_token_ids=list(config.eos_token_ids) or None,
    )


def read_gguf(path: Path) -> tuple[ArchConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, float32 weights and tokenizer of a GGUF file (gguf_config names the
    architectures it may hold)."""
    reader = open_gguf(path)
    config = read_config(reader, path)
    what = f"converting {path.name}: dequantizing weights, then the tokenizer"
    with Progress(what, total=len(reader.tensors) + 1, one_time=True) as progress:
        weights = read_weights(reader, config, path, progress)
        tokenizer = read_tokenizer(path, config)
        progress.advance()
    return config, weights, tokenizer
