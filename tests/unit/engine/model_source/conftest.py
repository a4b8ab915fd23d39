"""Shared fixtures: the default SmolLM2 GGUF and its transformers reference tokenizer (the
reference model, `hf_reference_model`, comes from tests/conftest.py), and a tiny llama GGUF
written here (mixed quantization types, untied head, small byte-level BPE tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.model_source import ModelBundle, ModelSourceError, default_model_path, load_model

TINY_HEADS, TINY_KV_HEADS, TINY_HEAD_DIM = 4, 2, 16
TINY_HIDDEN, TINY_INTER, TINY_LAYERS = 64, 256, 2
TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_MERGES = ["h e", "l l", "Ġ t", "Ġt he"]
# Indented blocks, a default system message, tojson and raise_exception: whitespace control and
# the helper functions must behave exactly as in transformers for the renders to match.
TINY_CHAT_TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are tiny.<|im_end|>
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
    {% if message.get('meta') %}
{{ message['meta'] | tojson }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""


@dataclass
class TinyGGUF:
    """A tiny llama GGUF and the HF-layout float weights it was quantized from."""

    path: Path
    source_weights: dict[str, np.ndarray]  # HF names, before llama.cpp's permutation
    tensor_types: dict[str, str]  # GGUF tensor name -> quantization type name
    num_heads: int = TINY_HEADS


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (what the loader must undo)."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tiny_tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    merged = ["".join(m.split(" ")) for m in TINY_MERGES]
    return TINY_SPECIALS + byte_chars + merged


def _q6_k_blocks(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random Q6_K blocks (210 bytes per 256 values) with a sane fp16 scale in each block."""
    blocks = rng.integers(0, 256, size=(rows, cols // 256, 210), dtype=np.uint8)
    blocks[..., 208:210] = np.array([0.001], dtype=np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def add_tiny_tokenizer(w: Any) -> int:
    """Write the tiny byte-level BPE tokenizer (bos 1, eos 2) into GGUFWriter `w`; returns
    its vocabulary size."""
    tokens = _tiny_tokens()
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(TINY_SPECIALS) + [1] * (len(tokens) - len(TINY_SPECIALS)))
    w.add_token_merges(TINY_MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    return len(tokens)


def write_tiny_gguf(path: Path, skip: frozenset[str] = frozenset()) -> TinyGGUF:
    """Write the tiny model, leaving out the GGUF tensors named in `skip`; q/k are stored
    permuted, as llama.cpp's converter does."""
    import gguf

    rng = np.random.default_rng(7)
    q_t = gguf.GGMLQuantizationType
    vocab = len(_tiny_tokens())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test")
    w.add_context_length(256)
    w.add_embedding_length(TINY_HIDDEN)
    w.add_block_count(TINY_LAYERS)
    w.add_feed_forward_length(TINY_INTER)
    w.add_head_count(TINY_HEADS)
    w.add_head_count_kv(TINY_KV_HEADS)
    w.add_rope_dimension_count(TINY_HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    add_tiny_tokenizer(w)
    w.add_chat_template(TINY_CHAT_TEMPLATE)

    v, h, i = vocab, TINY_HIDDEN, TINY_INTER
    q_rows, kv_rows = TINY_HEADS * TINY_HEAD_DIM, TINY_KV_HEADS * TINY_HEAD_DIM
    plan: list[tuple[str, str, tuple[int, ...], Any]] = [
        ("token_embd.weight", "model.embed_tokens.weight", (v, h), q_t.Q8_0),
        ("output.weight", "lm_head.weight", (v, h), q_t.Q4_0),
        ("output_norm.weight", "model.norm.weight", (h,), q_t.F32),
    ]
    layer_types = [
        [q_t.Q4_1, q_t.Q5_0, q_t.Q5_1, q_t.F16, q_t.BF16, q_t.Q8_0, q_t.Q6_K],
        [q_t.F16, q_t.F32, q_t.F32, q_t.Q4_0, q_t.Q4_1, q_t.F32, q_t.Q8_0],
    ]
    for layer, types in enumerate(layer_types):
        p, hf = f"blk.{layer}.", f"model.layers.{layer}."
        plan += [
            (p + "attn_q.weight", hf + "self_attn.q_proj.weight", (q_rows, h), types[0]),
            (p + "attn_k.weight", hf + "self_attn.k_proj.weight", (kv_rows, h), types[1]),
            (p + "attn_v.weight", hf + "self_attn.v_proj.weight", (kv_rows, h), types[2]),
            (p + "attn_output.weight", hf + "self_attn.o_proj.weight", (h, q_rows), types[3]),
            (p + "ffn_gate.weight", hf + "mlp.gate_proj.weight", (i, h), types[4]),
            (p + "ffn_up.weight", hf + "mlp.up_proj.weight", (i, h), types[5]),
            (p + "ffn_down.weight", hf + "mlp.down_proj.weight", (h, i), types[6]),
            (p + "attn_norm.weight", hf + "input_layernorm.weight", (h,), q_t.F32),
            (p + "ffn_norm.weight", hf + "post_attention_layernorm.weight", (h,), q_t.F32),
        ]
    source: dict[str, np.ndarray] = {}
    plan = [entry for entry in plan if entry[0] not in skip]
    for gguf_name, hf_name, shape, qtype in plan:
        values = rng.normal(0.0, 0.05, size=shape).astype(np.float32)
        source[hf_name] = values
        if ".attn_q." in gguf_name:
            values = llama_cpp_permute(values, TINY_HEADS)
        elif ".attn_k." in gguf_name:
            values = llama_cpp_permute(values, TINY_KV_HEADS)
        if qtype == q_t.F32:
            w.add_tensor(gguf_name, values)
        elif qtype == q_t.F16:
            w.add_tensor(gguf_name, values.astype(np.float16))
        elif qtype == q_t.Q6_K:  # gguf-py cannot quantize K-quants: write random blocks
            w.add_tensor(gguf_name, _q6_k_blocks(shape[0], shape[1], rng), raw_dtype=qtype)
            del source[hf_name]
        else:
            w.add_tensor(gguf_name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    types_by_name = {g: q_t(q).name for g, _, _, q in plan}
    return TinyGGUF(path=path, source_weights=source, tensor_types=types_by_name)


@pytest.fixture(name="llama_cpp_permute", scope="session")
def _llama_cpp_permute() -> Any:
    """The permutation function itself, for tests (fixtures are importable in every mode)."""
    return llama_cpp_permute


@pytest.fixture(name="write_tiny_gguf", scope="session")
def _write_tiny_gguf() -> Any:
    """The tiny GGUF writer itself, for tests that need a variant of the file."""
    return write_tiny_gguf


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    try:
        return default_model_path()
    except ModelSourceError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-model cache for the whole session, so the default GGUF converts once."""
    return tmp_path_factory.mktemp("tessera-cache")


@pytest.fixture(scope="session")
def cold_bundle(default_gguf: Path, session_cache: Path) -> ModelBundle:
    """The default model's first load: converted from the GGUF (the cache starts empty)."""
    bundle = load_model(None, cache_dir=session_cache)
    assert not bundle.from_cache
    return bundle


@pytest.fixture(scope="session")
def default_bundle(cold_bundle: ModelBundle, session_cache: Path) -> ModelBundle:
    """The default model as most tests see it: loaded back from the session cache."""
    bundle = load_model(None, cache_dir=session_cache)
    assert bundle.from_cache
    return bundle


@pytest.fixture(scope="session")
def hf_reference_tokenizer(default_gguf: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-llama.Q8_0.gguf")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_gguf: TinyGGUF, session_cache: Path) -> ModelBundle:
    return load_model(str(tiny_gguf.path), cache_dir=session_cache)
