"""Which CPU this is, as far as kernel speed and numerics go: model name and ISA flags."""

from __future__ import annotations

import hashlib
import platform
from functools import cache
from pathlib import Path


@cache
def _cpuinfo() -> tuple[str, str]:
    """This CPU's model name and flags lines from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), ""
    model = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return model, flags


def cpu_flags() -> set[str]:
    """This CPU's instruction-set flags as /proc/cpuinfo names them (avx2, avx512_vnni, ...)."""
    return set(_cpuinfo()[1].partition(":")[2].split())


@cache
def cpu_id() -> str:
    """A short identity of this CPU's model and instruction-set flags, for per-machine
    artifacts and cached gate verdicts."""
    model, flags = _cpuinfo()
    return hashlib.sha256((model + flags).encode()).hexdigest()[:10]
