"""Warm-up: run the largest step once, measure it, and size the KV pool from memory."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.backends import Backend, BatchInputs
from engine.config import CacheConfig, parse_size

_CPU_KV_CAP = 4 * 1024**3


@dataclass(frozen=True)
class EngineCapacity:
    """Limits the engine measured at start-up and reports (Info, logs, `generate`)."""

    backend: str
    quantization: str
    backend_reason: str  # why this backend and mode (the auto choice, or "as requested")
    device: str
    dtype: str
    weight_dtype: str
    num_blocks: int
    block_size: int
    kv_cache_bytes: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_concurrent_full_context: float  # sequences that fit at full context length
    warmup_seconds: float
    warmup_prefill_tokens_per_second: float
    model_load_seconds: float

    @property
    def num_kv_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def pool_summary(self) -> str:
        """The KV pool and the concurrent context it allows, for start-up banners."""
        text = (
            f"KV cache {self.kv_cache_bytes / 1024**3:.2f} GiB ({self.num_kv_tokens:,} tokens: "
            f"{self.max_concurrent_full_context:.1f} sequences at the full "
            f"{self.max_model_len:,}-token context)"
        )
        return text + (", resident as its blocks are first used" if self.device == "cpu" else "")

    def summary(self) -> str:
        gib = self.kv_cache_bytes / 1024**3
        return (
            f"backend={self.backend} quantization={self.quantization} device={self.device} "
            f"dtype={self.dtype} weights={self.weight_dtype} "
            f"kv={gib:.2f}GiB ({self.num_blocks} blocks x {self.block_size} = "
            f"{self.num_kv_tokens} tokens) max_model_len={self.max_model_len} "
            f"full-context seqs={self.max_concurrent_full_context:.1f} "
            f"prefill={self.warmup_prefill_tokens_per_second:.0f} tok/s "
            f"load={self.model_load_seconds:.1f}s warmup={self.warmup_seconds:.1f}s"
        )


def _available_ram() -> int:
    """Memory this process may still take: the host's MemAvailable, or less where a cgroup
    (a container's memory limit) allows less; /proc/meminfo shows the whole node."""
    available = 8 * 1024**3
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def warm_up(backend: Backend, num_tokens: int, block_size: int) -> tuple[float, float]:
    """Run one prefill of ``num_tokens`` on a scratch pool; return (seconds, tokens/s)."""
    blocks = -(-num_tokens // block_size)
    backend.allocate_kv_cache(blocks, block_size)
    pos = np.arange(num_tokens, dtype=np.int64)
    inputs = BatchInputs(
        token_ids=np.zeros(num_tokens, dtype=np.int64),
        positions=pos,
        slot_mapping=pos.copy(),
        block_tables=np.arange(blocks, dtype=np.int64)[None, :],
        context_lens=np.array([num_tokens], dtype=np.int64),
        query_start_loc=np.array([0, num_tokens], dtype=np.int64),
        logits_indices=np.array([num_tokens - 1], dtype=np.int64),
    )
    backend.forward(inputs)  # first call pays one-off allocation costs
    t0 = time.perf_counter()
    backend.forward(inputs)
    seconds = time.perf_counter() - t0
    return seconds, num_tokens / max(seconds, 1e-9)


class KVCapacityError(ValueError):
    """The KV budget cannot hold one full-context sequence: a settings problem, reported at
    start-up in one line."""


def kv_pool_blocks(backend: Backend, cache: CacheConfig, max_model_len: int) -> int:
    """Blocks the KV budget buys; KVCapacityError when one full-context sequence would not
    fit."""
    per_block = backend.kv_bytes_per_block(cache.block_size)
    if cache.kv_cache_memory != "auto":
        budget = parse_size(cache.kv_cache_memory)
    else:
        free = backend.available_memory()
        if free is not None:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            budget = int(free * 0.9)
        else:
            budget = min(_available_ram() // 4, _CPU_KV_CAP)
    blocks = budget // per_block
    needed = -(-max_model_len // cache.block_size)
    if blocks < needed:
        raise KVCapacityError(
            f"KV cache budget {budget / 2**20:.0f} MiB holds {blocks} blocks; one sequence at "
            f"max_model_len={max_model_len} needs {needed}: raise --kv-cache-memory or lower "
            "--max-model-len"
        )
    return int(blocks)
