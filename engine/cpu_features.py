"""Which CPU this is, as far as kernel speed and numerics go: model name and ISA flags."""

from __future__ import annotations

import hashlib
import platform
from functools import cache
from pathlib import Path


@cache
def cpu_id() -> str:
    """A short identity of this CPU's model and instruction-set flags, for per-machine
    artifacts and cached gate verdicts."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    except OSError:
        model, flags = platform.processor(), ""
    return hashlib.sha256((model + flags).encode()).hexdigest()[:10]
