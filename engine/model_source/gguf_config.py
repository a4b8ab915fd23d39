"""The ArchConfig of a GGUF file, from its metadata.

Keys are prefixed by the architecture (``llama.block_count``, ``qwen2.block_count``,
``gemma3.block_count``). The metadata is turned into the Hugging Face config.json the same
model would have, then read by its family (engine/model/families), so a GGUF and a Hugging
Face directory of one model give one ArchConfig.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from engine.model_source.arch import FULL, SLIDING, ArchConfig
from engine.model_source.errors import ModelSourceError, reason

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3")
"""general.architecture values read here (llama covers Llama-MoE, i.e. Mixtral)."""
ROPE_FREQS = "rope_freqs.weight"
"""llama.cpp's converter stores Llama 3.1+ RoPE scaling only as this tensor of divisors."""

# Gemma 3 facts llama.cpp hard-codes rather than storing (llama-model.cpp, LLM_ARCH_GEMMA3):
# every sixth layer attends globally, sliding layers rotate with base 10,000, and only the 27B
# model (62 layers) scales attention by hidden / heads instead of head_dim.
GEMMA3_GLOBAL_EVERY = 6
GEMMA3_LOCAL_ROPE_BASE = 10000.0
GEMMA3_27B_LAYERS = 62


def meta(reader: Any, key: str, default: Any = None) -> Any:
    """One metadata value (a list for array fields), or `default` when the key is absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_config(reader: Any, path: Path) -> ArchConfig:
    """The architecture of a llama (dense or mixture of experts), qwen2 or gemma3 GGUF."""
    arch = meta(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        known = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ModelSourceError(f"{path}: unsupported architecture {arch!r} (supported: {known})")
    d = _common(reader, path, arch)
    if arch == "llama":
        d.update(_llama(reader, path, d))
    elif arch == "qwen2":
        d["model_type"] = "qwen2"
    else:
        d.update(_gemma3(reader, d))
    try:
        return ArchConfig.from_hf_dict(d)
    except (KeyError, TypeError, ValueError) as e:  # e.g. heads not a multiple of kv heads
        raise ModelSourceError(f"{path}: invalid {arch} metadata: {reason(e)}") from e


def _common(reader: Any, path: Path, arch: str) -> dict[str, Any]:
    """The config.json keys every architecture states the same way."""

    def need(key: str) -> Any:
        value = meta(reader, f"{arch}.{key}")
        if value is None:
            raise ModelSourceError(f"{path}: GGUF metadata lacks '{arch}.{key}'")
        if isinstance(value, list):  # per-layer values (e.g. varying head counts)
            raise ModelSourceError(f"{path}: per-layer '{arch}.{key}' is not supported")
        return value

    heads, hidden = int(need("attention.head_count")), int(need("embedding_length"))
    head_dim = meta(reader, f"{arch}.attention.key_length") or meta(
        reader, f"{arch}.rope.dimension_count", hidden // heads
    )
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = meta(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
    if vocab is None:
        raise ModelSourceError(f"{path}: GGUF has neither {arch}.vocab_size nor a token list")
    eos = [meta(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    return {
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta(reader, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(head_dim),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta(reader, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta(reader, f"{arch}.context_length", 2048)),
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
        "bos_token_id": meta(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": list(dict.fromkeys(int(i) for i in eos if i is not None)),
    }


def _llama(reader: Any, path: Path, d: dict[str, Any]) -> dict[str, Any]:
    """Llama's RoPE scaling; with experts (llama.expert_count) it is Mixtral, whose experts
    are feed_forward_length wide and whose top-k weights are renormalised."""
    out: dict[str, Any] = {
        "model_type": "llama",
        "rope_scaling": _rope_scaling(reader, path, d["rope_theta"], d["head_dim"]),
    }
    experts = int(meta(reader, "llama.expert_count", 0) or 0)
    if experts:
        used = meta(reader, "llama.expert_used_count")
        if used is None:
            raise ModelSourceError(f"{path}: GGUF metadata lacks 'llama.expert_used_count'")
        out.update(model_type="mixtral", num_local_experts=experts, num_experts_per_tok=int(used))
    return out


def _gemma3(reader: Any, d: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3's window, its layer pattern and its two RoPE bases (llama.cpp's fixed ones)."""
    layers = d["num_hidden_layers"]
    scalar = d["head_dim"]
    if layers == GEMMA3_27B_LAYERS:
        scalar = d["hidden_size"] // d["num_attention_heads"]
    return {
        "model_type": "gemma3_text",
        "sliding_window": int(meta(reader, "gemma3.attention.sliding_window", 4096)),
        "layer_types": [
            FULL if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 else SLIDING for i in range(layers)
        ],
        "query_pre_attn_scalar": scalar,
        "rope_parameters": {
            FULL: {"rope_type": "default", "rope_theta": d["rope_theta"]},
            SLIDING: {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_ROPE_BASE},
        },
    }


def _rope_scaling(reader: Any, path: Path, theta: float, head_dim: int) -> dict[str, Any] | None:
    """HF rope_scaling from llama.rope.scaling.* keys, or recovered from a rope_freqs tensor."""
    kind = meta(reader, "llama.rope.scaling.type")
    factor = meta(reader, "llama.rope.scaling.factor")
    if kind in ("linear", "yarn") and factor:
        scaling: dict[str, Any] = {"rope_type": kind, "factor": float(factor)}
        original = meta(reader, "llama.rope.scaling.original_context_length")
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
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
