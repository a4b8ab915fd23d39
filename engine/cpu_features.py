"""What this CPU can do that decides which kernels are fast: its instruction-set flags."""

from __future__ import annotations

from functools import cache
from pathlib import Path

# Any of these gives int8 dot products in one instruction (oneDNN's fast int8 path).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's flags from /proc/cpuinfo (empty where there is none to read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_int8_dot_products(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies int8 vectors natively (VNNI or AMX)."""
    return bool((cpu_flags() if flags is None else flags) & INT8_DOT_FLAGS)
