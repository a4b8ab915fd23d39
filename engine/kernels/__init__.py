"""Native CPU kernels, compiled on first use with the machine's C++ compiler.

A kernel that cannot be built (no compiler, no ninja) leaves its caller on the
pure PyTorch path; ``load_cpu_kernels`` says why once in the log.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)
_HERE = Path(__file__).parent
_SOURCES = [
    _HERE / name
    for name in (
        "module.cpp",
        "paged_decode_attention.cpp",
        "int8_linear.cpp",
        "rms_norm.cpp",
        "rope_and_kv.cpp",
        "silu_and_mul.cpp",
        "small_batch_linear.cpp",
    )
]


@cache
def load_cpu_kernels() -> ModuleType | None:
    """The compiled extension module, or None when it cannot be built here."""
    # The ninja that pip installs lives beside the interpreter, which may not be on
    # PATH when the venv is not activated (e.g. `.venv/bin/python -m pytest`).
    venv_bin = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and venv_bin not in os.environ.get("PATH", ""):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils.cpp_extension import load

        return load(
            name="tessera_cpu_kernels",
            sources=[str(p) for p in _SOURCES],
            extra_include_paths=[str(_HERE)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # any build failure means: use the PyTorch path
        log.warning("native CPU kernels unavailable, using the PyTorch paths: %s", e)
        return None
