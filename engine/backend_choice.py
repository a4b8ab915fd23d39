"""Which backend and mode an engine runs: the fastest, measured here, that passes the gates.

Every candidate for the device class is considered. A reduced-precision one must first pass
the accuracy gates (engine.accuracy) against the float PyTorch reference on this machine;
then each survivor's decode speed is timed at 1 and at 32 sequences, and the fastest by the
geometric mean of the two wins (a single stream and a full batch weigh alike). Verdicts and
timings are cached on disk per model, mode, library versions and CPU, so only the first
start pays for them; a cached loser is not even built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.accuracy import CHAT_PROMPTS, GATE_TEXT, GateResult, run_gates
from engine.backends import (
    Backend,
    BackendOptions,
    BackendTarget,
    BatchInputs,
    backend_class,
    create_backend,
)
from engine.backends.onnx_graph import weights_fingerprint
from engine.kernels import kernel_sources_digest
from engine.model_source import ModelBundle
from engine.progress import Progress

log = logging.getLogger(__name__)

CPU_CANDIDATES = [("torch", "int8"), ("onnx", "int8"), ("torch", "none")]
# On CUDA only the PyTorch path is verified so far (TensorRT INT8 is opt-in: README).
GPU_CANDIDATES = [("torch", "none")]
_REFERENCE = ("torch", "none")  # what reduced-precision candidates are gated against
SPEED_BATCHES = (1, 32)
_SPEED_CONTEXT = 64  # tokens already in each sequence's KV while timing a decode step
_SPEED_STEPS = 5
_RECORD_VERSION = 3  # a changed record layout or measurement is measured afresh


@dataclass(frozen=True)
class Measured:
    """A candidate's gate verdict (None for the float reference) and decode speed here."""

    name: str
    quantization: str
    gate: GateResult | None
    tokens_per_second: dict[int, float]
    """Decode tokens/s by number of sequences (SPEED_BATCHES)."""

    @property
    def passed(self) -> bool:
        return self.gate is None or self.gate.passed

    @property
    def score(self) -> float:
        return math.exp(statistics.fmean(math.log(v) for v in self.tokens_per_second.values()))

    def speeds(self) -> str:
        return " / ".join(f"{v:.0f}" for v in self.tokens_per_second.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "quantization": self.quantization,
            "gate": None if self.gate is None else self.gate.to_json(),
            "tokens_per_second": {str(k): v for k, v in self.tokens_per_second.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measured:
        gate = None if data["gate"] is None else GateResult.from_json(data["gate"])
        speed = {int(k): float(v) for k, v in data["tokens_per_second"].items()}
        return cls(data["name"], data["quantization"], gate, speed)


@dataclass(frozen=True)
class BackendChoice:
    """The backend an engine runs, and why."""

    backend: Backend
    name: str
    quantization: str
    reason: str


def _record_key(bundle: ModelBundle, name: str, options: BackendOptions) -> str:
    import onnxruntime

    from engine.cpu_features import cpu_id

    ident = json.dumps(
        [
            _RECORD_VERSION,
            weights_fingerprint(bundle),
            name,
            options.identity(),  # the backend's options, its weight or graph form among them
            kernel_sources_digest(),  # new kernels are timed afresh
            torch.__version__,
            onnxruntime.__version__,
            platform.machine(),
            cpu_id(),
            GATE_TEXT.read_text(),
            CHAT_PROMPTS.read_text(),
        ],
        default=str,
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def decode_inputs(batch: int, context: int, block_size: int) -> BatchInputs:
    """``batch`` sequences decoding the token at position ``context``, blocks disjoint."""
    nb = context // block_size + 1
    tables = np.arange(batch * nb, dtype=np.int64).reshape(batch, nb)
    return BatchInputs(
        token_ids=np.full(batch, 42, dtype=np.int64),
        positions=np.full(batch, context, dtype=np.int64),
        slot_mapping=tables[:, -1] * block_size + context % block_size,
        block_tables=tables,
        context_lens=np.full(batch, context + 1, dtype=np.int64),
        query_start_loc=np.arange(batch + 1, dtype=np.int64),
        logits_indices=np.arange(batch, dtype=np.int64),
    )


def measure_decode(backend: Backend, batches: tuple[int, ...] = SPEED_BATCHES) -> dict[int, float]:
    """Decode tokens/s of ``backend`` at each batch size: the median of a few steps after one
    warm-up step; reallocates its KV pool."""
    backend.activate()
    block_size = 16
    blocks = (_SPEED_CONTEXT // block_size + 1) * max(batches)
    backend.allocate_kv_cache(blocks, block_size)
    return {
        batch: batch
        / median_step_seconds(backend, decode_inputs(batch, _SPEED_CONTEXT, block_size))
        for batch in batches
    }


def step_seconds(backend: Backend, inputs: BatchInputs) -> float:
    """The time of one forward pass over ``inputs``."""
    t = time.perf_counter()
    backend.forward(inputs)
    return time.perf_counter() - t


def median_step_seconds(backend: Backend, inputs: BatchInputs, steps: int = _SPEED_STEPS) -> float:
    """The median time of ``steps`` forward passes over ``inputs``, after one warm-up pass."""
    backend.forward(inputs)
    return statistics.median(step_seconds(backend, inputs) for _ in range(steps))


class _Records:
    """Cached verdicts and timings under ``cache_dir/gates``, one JSON file a candidate."""

    def __init__(self, cache_dir: Path, bundle: ModelBundle) -> None:
        self.dir = cache_dir / "gates"
        self.bundle = bundle

    def path(self, name: str, options: BackendOptions) -> Path:
        return self.dir / f"{_record_key(self.bundle, name, options)}.json"

    def load(self, name: str, options: BackendOptions) -> Measured | None:
        path = self.path(name, options)
        try:
            return Measured.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, record: Measured, options: BackendOptions) -> None:
        """Keep the record; a cache that cannot take it (a full disk) costs the next start a
        new measurement, never a half-written file or this start."""
        path = self.path(record.name, options)
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record.to_json()))
            tmp.replace(path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("could not keep the %s measurement in %s: %s", record.name, self.dir, e)


def choose_backend(target: BackendTarget, bundle: ModelBundle, cache_dir: Path) -> BackendChoice:
    """Create the requested backend, or with ``auto`` the fastest one passing the gates;
    verdicts and timings are kept under ``cache_dir``."""
    name, quantization = target.config.name, target.config.quantization
    if name != "auto":
        backend = create_backend(name, bundle, target)
        return BackendChoice(backend, name, target.quantization, "as requested")
    candidates = GPU_CANDIDATES if target.device.startswith("cuda") else CPU_CANDIDATES
    if quantization != "auto":
        candidates = [c for c in candidates if c[1] == quantization] or [("torch", quantization)]
    records = _Records(cache_dir, bundle)
    built: dict[tuple[str, str], Backend] = {}  # each built at most once, the reference too

    def backend_for(key: tuple[str, str]) -> Backend:
        if key not in built:
            built[key] = create_backend(key[0], bundle, target.with_quantization(key[1]))
        return built[key]

    measured: list[Measured] = []
    refused: list[str] = []
    for key in candidates:
        opts = backend_class(key[0]).options_from(target.with_quantization(key[1]))
        record = records.load(key[0], opts)
        if record is None:
            try:
                backend = backend_for(key)
            except (RuntimeError, ValueError, ImportError, OSError) as e:
                refused.append(f"{key[0]} {key[1]}: {e}")
                continue
            gate = None
            if key[1] != "none":
                what = f"checking {key[0]} {key[1]} against the float model (accuracy gates)"
                with Progress(what, one_time=True):
                    gate = run_gates(backend_for(_REFERENCE), backend, bundle.tokenizer)
            passed = gate is None or gate.passed
            speed: dict[int, float] = {}
            if passed:
                with Progress(f"timing {key[0]} {key[1]} decode steps", one_time=True):
                    speed = measure_decode(backend)
            record = Measured(key[0], key[1], gate, speed)
            records.save(record, opts)
        if not record.passed:
            assert record.gate is not None
            refused.append(f"{key[0]} {key[1]}: failed the gates ({record.gate.describe()})")
            built.pop(key, None)
            continue
        measured.append(record)
    if not measured:
        raise RuntimeError("no backend could start: " + "; ".join(refused))
    best = max(measured, key=lambda m: m.score)
    backend = backend_for((best.name, best.quantization))
    built.clear()
    backend.activate()
    return BackendChoice(backend, best.name, best.quantization, _reason(best, measured, refused))


def _reason(best: Measured, measured: list[Measured], refused: list[str]) -> str:
    for line in refused:
        log.info("backend candidate skipped: %s", line)
    batches = "/".join(str(b) for b in SPEED_BATCHES)
    timed = "; ".join(f"{m.name} {m.quantization} {m.speeds()}" for m in measured)
    why = f"fastest measured here (decode tok/s at {batches} sequences: {timed})"
    if best.gate is not None:
        why += f"; accuracy gates passed ({best.gate.describe()})"
    elif any(m.gate is not None for m in measured):
        why += "; no INT8 form that passes the gates is faster here than float"
    else:
        why += "; no INT8 form passes the accuracy gates here"
    return why if not refused else f"{why}; skipped {'; '.join(refused)}"
