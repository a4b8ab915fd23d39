"""Read a llama.cpp GGUF file: its config, its weights dequantized to float32, its tokenizer.

Weights come out under Hugging Face names with llama.cpp's Q/K row permutation undone, so the
result equals what transformers loads from the same file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch

from engine.model_source.arch import ArchConfig
from engine.model_source.errors import ModelSourceError, reason
from engine.model_source.layout import check_weights
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
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
# llama.cpp's converter stores Llama 3.1+ RoPE scaling only as this tensor of per-pair divisors.
_ROPE_FREQS = "rope_freqs.weight"
_QUANT_SUFFIX = re.compile(r"[.-](I?Q\d\w*|[BF]F?16|F32)$", re.IGNORECASE)


def model_name(path: Path) -> str:
    """A display name from the file name, quantization suffix dropped:
    "SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct"."""
    return _QUANT_SUFFIX.sub("", path.stem) or path.stem


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a llama GGUF tensor, or None when it has no counterpart."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_TENSOR.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


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


def _meta(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_config(reader: Any, path: Path) -> ArchConfig:
    """The architecture from GGUF metadata (llama.* keys, token ids, tied when no output.weight)."""
    arch = _meta(reader, "general.architecture")
    if arch != "llama":
        raise ModelSourceError(
            f"{path}: unsupported architecture {arch!r} (only 'llama' is supported)"
        )

    def need(key: str) -> Any:
        value = _meta(reader, f"llama.{key}")
        if value is None:
            raise ModelSourceError(f"{path}: GGUF metadata lacks 'llama.{key}'")
        if isinstance(value, list):  # per-layer values (e.g. varying head counts)
            raise ModelSourceError(f"{path}: per-layer 'llama.{key}' is not supported")
        return value

    heads, hidden = int(need("attention.head_count")), int(need("embedding_length"))
    head_dim = _meta(reader, "llama.attention.key_length") or _meta(
        reader, "llama.rope.dimension_count", hidden // heads
    )
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = _meta(reader, "llama.vocab_size") or (len(tokens.data) if tokens else None)
    if vocab is None:
        raise ModelSourceError(f"{path}: GGUF has neither llama.vocab_size nor a token list")
    eos = [_meta(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    names = {t.name for t in reader.tensors}
    theta = float(_meta(reader, "llama.rope.freq_base", 10000.0))
    return ArchConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_meta(reader, "llama.attention.head_count_kv", heads)),
        head_dim=int(head_dim),
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=theta,
        rope_scaling=_rope_scaling(reader, path, theta, int(head_dim)),
        max_position_embeddings=int(_meta(reader, "llama.context_length", 2048)),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_meta(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys(int(i) for i in eos if i is not None)),
    )


def _rope_scaling(reader: Any, path: Path, theta: float, head_dim: int) -> dict[str, Any] | None:
    """HF rope_scaling from llama.rope.scaling.* keys, or recovered from a rope_freqs tensor."""
    kind = _meta(reader, "llama.rope.scaling.type")
    factor = _meta(reader, "llama.rope.scaling.factor")
    if kind in ("linear", "yarn") and factor:
        scaling: dict[str, Any] = {"rope_type": kind, "factor": float(factor)}
        original = _meta(reader, "llama.rope.scaling.original_context_length")
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    freqs = next((t for t in reader.tensors if t.name == _ROPE_FREQS), None)
    if freqs is None:
        return None
    found = np.asarray(freqs.data, dtype=np.float64).reshape(-1)
    # Every Llama 3.x release uses these band edges; only the factor varies, so try it and
    # accept it only if it reproduces the stored divisors.
    scaling = {
        "rope_type": "llama3",
        "factor": float(found.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    if not np.allclose(llama3_rope_divisors(scaling, theta, head_dim), found, rtol=1e-4):
        raise ModelSourceError(f"{path}: rope_freqs tensor does not match llama3 RoPE scaling")
    return scaling


def llama3_rope_divisors(scaling: dict[str, Any], theta: float, head_dim: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as rope_freqs for llama3 RoPE scaling."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out)


def read_weights(
    reader: Any, config: ArchConfig, path: Path, progress: Progress | None = None
) -> dict[str, torch.Tensor]:
    """All tensors dequantized to float32 [out, in] under HF names, Q/K permutation undone."""
    from gguf.quants import dequantize

    weights: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if progress is not None:
            progress.advance()
        if t.name == _ROPE_FREQS:  # already folded into config.rope_scaling
            continue
        name = hf_name(t.name)
        if name is None:
            raise ModelSourceError(f"{path}: unsupported tensor '{t.name}' in a llama GGUF")
        try:
            w = dequantize(t.data, t.tensor_type)
        except Exception as e:  # unknown quant types raise NotImplementedError
            raise ModelSourceError(f"{path}: cannot dequantize '{t.name}': {reason(e)}") from e
        if ".attn_q." in t.name:
            w = reverse_permute(w, config.num_attention_heads)
        elif ".attn_k." in t.name:
            w = reverse_permute(w, config.num_key_value_heads)
        # F32 tensors come back as read-only views of the memory-mapped file: copy those.
        own = w.flags.writeable and not isinstance(w, np.memmap)
        weights[name] = torch.from_numpy(np.ascontiguousarray(w if own else np.array(w)))
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
    """Config, float32 weights and tokenizer of a llama GGUF file."""
    reader = open_gguf(path)
    try:
        config = read_config(reader, path)
    except (TypeError, ValueError) as e:  # e.g. heads not a multiple of kv heads
        raise ModelSourceError(f"{path}: invalid llama metadata: {reason(e)}") from e
    what = f"converting {path.name}: dequantizing weights, then the tokenizer"
    with Progress(what, total=len(reader.tensors) + 1, one_time=True) as progress:
        weights = read_weights(reader, config, path, progress)
        tokenizer = read_tokenizer(path, config)
        progress.advance()
    return config, weights, tokenizer
