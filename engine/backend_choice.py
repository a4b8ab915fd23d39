"""Which backend and mode an engine runs: the fastest that passes the accuracy gates here.

Candidates are tried in the speed order bench/engine_throughput.py measured for the device
class; a reduced-precision candidate is accepted only after it passes the INT8 gates
(engine.accuracy) against the float PyTorch reference on this machine. The verdict is cached
on disk per model, mode, library versions and CPU, so only the first start pays for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engine.accuracy import GATE_TEXT, GateResult, compare, score_text
from engine.backends import Backend, BackendOptions, create_backend
from engine.backends.onnx_graph import GRAPH_VERSION, weights_fingerprint
from engine.backends.torch_backend import TORCH_INT8_FORM
from engine.cpu_features import cpu_id, has_avx2
from engine.model_source import ModelBundle

log = logging.getLogger(__name__)

# Fastest first, per bench/results/engine_throughput-*.md: on an AVX2 CPU torch int8 (its
# int8 matmul kernel, engine/kernels/int8_linear.cpp) leads onnx int8 at 32 sequences and
# in single-stream decode (2026-12-02); without AVX2 that kernel is a portable loop.
CPU_CANDIDATES = [("torch", "int8"), ("onnx", "int8"), ("torch", "none")]
CPU_CANDIDATES_WITHOUT_AVX2 = [("onnx", "int8"), ("torch", "none")]
# On CUDA only the PyTorch path is verified so far (TensorRT INT8 is opt-in: README).
GPU_CANDIDATES = [("torch", "none")]


@dataclass(frozen=True)
class BackendChoice:
    """The backend an engine runs, and why."""

    backend: Backend
    name: str
    quantization: str
    reason: str


def _gate_key(bundle: ModelBundle, name: str, options: BackendOptions) -> str:
    import onnxruntime

    ident = json.dumps(
        [
            weights_fingerprint(bundle),
            name,
            options.quantization,
            options.int8_scheme,
            options.provider,
            options.int8_lm_head,
            GRAPH_VERSION,  # a changed INT8 form must be gated afresh
            TORCH_INT8_FORM,
            torch.__version__,
            onnxruntime.__version__,
            platform.machine(),
            platform.processor(),
            cpu_id(),
            GATE_TEXT.read_text(),
        ]
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def gate(
    bundle: ModelBundle, name: str, backend: Backend, options: BackendOptions, cache_dir: Path
) -> GateResult:
    """The candidate's gate result on the packaged gate text, measured once and cached."""
    path = cache_dir / "gates" / f"{_gate_key(bundle, name, options)}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return GateResult(data["perplexity_ratio"], data["top1_agreement"])
    ids = bundle.tokenizer.encode(GATE_TEXT.read_text())
    reference = create_backend("torch", bundle, BackendOptions(max_model_len=options.max_model_len))
    result = compare(score_text(reference, ids), score_text(backend, ids))
    del reference
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.__dict__))
    tmp.replace(path)
    return result


def choose_backend(
    name: str, quantization: str, options: BackendOptions, bundle: ModelBundle, cache_dir: Path
) -> BackendChoice:
    """Create the requested backend, or with ``auto`` the fastest one passing the gates."""
    if name != "auto":
        quant = "none" if quantization == "auto" else quantization
        opts = _with(options, quant)
        return BackendChoice(create_backend(name, bundle, opts), name, quant, "as requested")
    cuda = options.device.startswith("cuda")
    if cuda:
        candidates = GPU_CANDIDATES
    else:
        candidates = CPU_CANDIDATES if has_avx2() else CPU_CANDIDATES_WITHOUT_AVX2
    if quantization != "auto":
        candidates = [c for c in candidates if c[1] == quantization] or [("torch", quantization)]
    refused = []
    for cand_name, quant in candidates:
        opts = _with(options, quant)
        try:
            backend = create_backend(cand_name, bundle, opts)
        except (RuntimeError, ValueError, ImportError, OSError) as e:
            refused.append(f"{cand_name} {quant}: {e}")
            continue
        if quant == "none":
            return BackendChoice(backend, cand_name, quant, _reason("float reference", refused))
        result = gate(bundle, cand_name, backend, opts, cache_dir)
        if result.passed:
            why = f"fastest passing the accuracy gates here ({result.describe()})"
            return BackendChoice(backend, cand_name, quant, _reason(why, refused))
        refused.append(f"{cand_name} {quant}: failed the gates ({result.describe()})")
    raise RuntimeError("no backend could start: " + "; ".join(refused))


def _with(options: BackendOptions, quantization: str) -> BackendOptions:
    return replace(options, quantization=quantization)


def _reason(why: str, refused: list[str]) -> str:
    for line in refused:
        log.warning("backend candidate skipped: %s", line)
    return why if not refused else f"{why}; skipped {'; '.join(refused)}"
