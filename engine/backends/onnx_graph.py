"""The engine's step as an ONNX graph, exported from the one model definition, then quantized.

Graph contract (every ONNX-based backend runs exactly this):

    inputs   token_ids [T] int64, positions [T] int64,
             past_lens [B] int64        tokens already cached per sequence,
             block_tables [B, nb] int64 blocks holding those cached tokens,
             logits_indices [R] int64   rows whose next-token logits are wanted,
             kv_pool [L * 2 * kv_heads * NB, bs, head_dim] float32, read in place
                 (row ((2l + kind) * kv_heads + h) * NB + block: see GatheredPoolAttention)
    outputs  logits [R, vocab] float32,
             new_kv [L * 2, T, kv_heads, head_dim] float32  this step's K (even rows)
             and V (odd rows), which the backend writes into the pool at their slots

T = B * Q: the B sequences of one call feed Q tokens each (see GatheredPoolAttention).
Built artifacts are cached on disk under a key made of the weights, the options and the
library versions, so a restart never rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.backends.onnx_int8 import FLOAT_LAYERS, quantize_dynamic_blockwise, quantize_qdq_weights
from engine.model.attention import GatheredPoolAttention
from engine.model.decoder import DecoderModel
from engine.model_source import ModelBundle
from engine.progress import Progress

log = logging.getLogger(__name__)

# Bump when the graph contract or the export changes: older artifacts stop matching.
GRAPH_VERSION = 9  # 9: attention scale and sliding windows per layer (model families)
OPSET = 17
INPUT_NAMES = ["token_ids", "positions", "past_lens", "block_tables", "logits_indices", "kv_pool"]
OUTPUT_NAMES = ["logits", "new_kv"]


class StepGraph(nn.Module):
    """DecoderModel wrapped to the graph contract above (what torch.onnx.export traces)."""

    def __init__(self, model: DecoderModel, fused_attention: bool) -> None:
        super().__init__()
        self.model = model
        self.fused_attention = fused_attention

    def forward(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        past_lens: torch.Tensor,
        block_tables: torch.Tensor,
        logits_indices: torch.Tensor,
        kv_pool: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attention = GatheredPoolAttention(
            kv_pool, block_tables, past_lens, self.model.cfg, self.fused_attention
        )
        logits = self.model(token_ids, positions, logits_indices, attention)
        return logits, torch.stack(attention.new_kv)  # [R, V], [L * 2, T, kvh, hd]


@dataclass(frozen=True)
class GraphOptions:
    """What an artifact depends on besides the weights."""

    quantization: str = "none"  # none | int8
    int8_scheme: str = "dynamic"  # dynamic (CPU, int8 x int8 blocks) | qdq (weights, TensorRT)
    int8_lm_head: bool = True  # quantize the vocabulary projection too
    int8_block_size: int = 128  # dynamic: input channels sharing one scale (README: measured)
    fused_attention: bool = True  # ONNX Runtime's GroupQueryAttention (CPU); False: plain ops
    max_positions: int = 2048


def weights_fingerprint(bundle: ModelBundle) -> str:
    """A cheap digest of the weights: names, shapes and a strided sample of every tensor."""
    h = hashlib.sha256(bundle.config.to_hf_dict().__repr__().encode())
    for name in sorted(bundle.weights):
        t = bundle.weights[name].detach().reshape(-1)
        step = max(1, t.numel() // 4096)
        h.update(f"{name}{tuple(bundle.weights[name].shape)}".encode())
        h.update(t[::step].float().numpy().tobytes())
    return h.hexdigest()


def artifact_key(bundle: ModelBundle, opts: GraphOptions) -> str:
    """Key of one built model: weights + options + graph version + library versions."""
    import onnx
    import onnxruntime

    ident = json.dumps(
        {
            "weights": weights_fingerprint(bundle),
            "options": opts.__dict__,
            "graph": GRAPH_VERSION,
            "opset": OPSET,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def build_model_file(bundle: ModelBundle, opts: GraphOptions, cache_dir: Path) -> Path:
    """The .onnx file for these weights and options, built once and then read from disk."""
    entry = cache_dir / "onnx" / artifact_key(bundle, opts)
    path = entry / "model.onnx"
    if path.is_file():
        log.info("ONNX artifact cache hit: %s", path)
        return path
    # INT8 forms are made from the cached float artifact: one export serves every mode.
    float_path = None
    if opts.quantization == "int8":
        float_opts = GraphOptions(
            quantization="none",
            max_positions=opts.max_positions,
            fused_attention=opts.fused_attention,
        )
        float_path = build_model_file(bundle, float_opts, cache_dir)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        out = tmp / "model.onnx"
        if float_path is None:
            with Progress("exporting the float32 step graph to ONNX", one_time=True):
                export_float(bundle, out, opts.max_positions, opts.fused_attention)
        else:
            keep_float = [t for t in FLOAT_LAYERS if not (opts.int8_lm_head and t == "lm_head")]
            with Progress(f"quantizing the ONNX graph to int8 ({opts.int8_scheme})", one_time=True):
                if opts.int8_scheme == "qdq":
                    quantize_qdq_weights(float_path, out, keep_float)
                else:
                    quantize_dynamic_blockwise(float_path, out, keep_float, opts.int8_block_size)
        log.info("built ONNX artifact %s (%s)", entry, opts)
        (tmp / "build.json").write_text(json.dumps(opts.__dict__, indent=2))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not path.is_file():  # not "another process built it first"
                raise
        return path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_float(bundle: ModelBundle, path: Path, max_positions: int, fused: bool) -> None:
    """Trace the float32 model into ``path`` (weights as initializers, dynamic shapes)."""
    cfg = bundle.config
    model = DecoderModel(cfg, max_positions=max_positions)
    model.load_hf_weights(bundle.weights)
    model.use_linear_kernel("export")  # one MatMul per projection, as the quantizers expect
    graph = StepGraph(model.eval(), fused)
    sample = sample_inputs(bundle, num_seqs=2, tokens_per_seq=3, past_blocks=2, pool_blocks=6)
    dynamic_axes = {
        "token_ids": {0: "num_tokens"},
        "positions": {0: "num_tokens"},
        "past_lens": {0: "num_seqs"},
        "block_tables": {0: "num_seqs", 1: "num_past_blocks"},
        "logits_indices": {0: "num_rows"},
        "kv_pool": {0: "pool_rows"},
        "logits": {0: "num_rows"},
        "new_kv": {1: "num_tokens"},
    }
    with torch.inference_mode(), warnings.catch_warnings():
        # The attention's shape constants (head counts, head size) are meant to be
        # constants in the trace, which is what the tracer warns about.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            tuple(torch.from_numpy(sample[n]) for n in INPUT_NAMES),
            str(path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            custom_opsets={"com.microsoft": 1},
            do_constant_folding=True,
            dynamo=False,
        )


# The KV block size the step graph is traced with: the backend refuses any other.
GRAPH_BLOCK_SIZE = 16


def sample_inputs(
    bundle: ModelBundle,
    num_seqs: int,
    tokens_per_seq: int,
    past_blocks: int,
    pool_blocks: int,
    block_size: int = GRAPH_BLOCK_SIZE,
    token_ids: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """A valid graph input: ``num_seqs`` sequences with no cached tokens (block tables
    point at distinct blocks the mask hides), used for tracing."""
    cfg = bundle.config
    n = num_seqs * tokens_per_seq
    if token_ids is None:
        token_ids = np.arange(n, dtype=np.int64) % cfg.vocab_size
    tables = np.arange(num_seqs * past_blocks, dtype=np.int64).reshape(num_seqs, past_blocks)
    return {
        "token_ids": token_ids.astype(np.int64),
        "positions": np.tile(np.arange(tokens_per_seq, dtype=np.int64), num_seqs),
        "past_lens": np.zeros(num_seqs, dtype=np.int64),
        "block_tables": tables % pool_blocks,
        "logits_indices": np.arange(n, dtype=np.int64)[tokens_per_seq - 1 :: tokens_per_seq],
        "kv_pool": np.zeros(
            (
                cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * pool_blocks,
                block_size,
                cfg.head_dim,
            ),
            dtype=np.float32,
        ),
    }
