"""What the benchmark ran on: CPU model, the instruction sets that decide kernel speed, cores.

The machines this project is benchmarked on differ from session to session (one had AVX2
only, another AVX-512 with VNNI and bf16), and int8 / bf16 kernels change speed with them,
so every report names them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The flags that change which matmul kernels run (int8 dot products, bf16, AMX).
_ISA = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    cpu, flags, mem_kb = platform.processor() or platform.machine(), set(), 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu_model": cpu,
        "isa": [f for f in _ISA if f in flags],
        "cores": cpu_cores(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def describe(info: dict[str, Any] | None = None) -> str:
    """One line: 'AMD EPYC, 2 cores, avx2 avx512f ..., 23.4 GiB'."""
    m = info or machine_info()
    isa = " ".join(m.get("isa") or []) or "ISA unknown"
    return f"{m['cpu_model']}, {m['cores']} cores, {isa}, {m['memory_gib']} GiB"


def write_report(lines: list[str], out: Path | None) -> str:
    """Print a Markdown report and write it to ``out`` when given; returns its text."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.write_text(text)
    return text
