"""Native CPU kernels, compiled on first use with the machine's C++ compiler.

A kernel that cannot be built (no compiler, no ninja) leaves its caller on the
pure PyTorch path; ``load_cpu_kernels`` says why once in the log. The serving build
targets this CPU (-march=native); ``load_block_linear_variant`` builds the block
linear kernel for one named instruction set, so tests run every path the CPU can.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from engine.cpu_features import cpu_flags
from engine.progress import Progress

log = logging.getLogger(__name__)
_HERE = Path(__file__).parent
_SOURCES = [
    _HERE / name
    for name in (
        "module.cpp",
        "paged_decode_attention.cpp",
        "block_linear.cpp",
        "rms_norm.cpp",
        "rope_and_kv.cpp",
        "silu_and_mul.cpp",
        "small_batch_linear.cpp",
        "decode_stack.cpp",
    )
]


@cache
def kernel_sources_digest() -> str:
    """A digest of the kernels' sources: what a cached timing of them depends on."""
    digest = hashlib.sha256()
    for path in sorted(_HERE.glob("*.[ch]*")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# Compiler flags per instruction set of block_linear.cpp's paths; the CPU flags each needs.
BLOCK_LINEAR_ISAS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "avx2": (
        ["-mavx2", "-mfma", "-mf16c", "-mno-avx512f", "-mno-avxvnni"],
        ("avx2", "fma", "f16c"),
    ),
    # AVX-VNNI (the VEX form of vpdpwssd, 256-bit only): Intel from Alder Lake and Sapphire
    # Rapids; a CPU with AVX-512 VNNI too serves from that path, so only this build runs it.
    "avx_vnni": (
        ["-mavx2", "-mfma", "-mf16c", "-mavxvnni", "-mno-avx512f"],
        ("avx2", "fma", "f16c", "avx_vnni"),
    ),
    "avx512_vnni": (
        ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
        ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
    ),
}


def _build(name: str, sources: list[Path], cflags: list[str]) -> ModuleType:
    # The ninja that pip installs lives beside the interpreter, which may not be on
    # PATH when the venv is not activated (e.g. `.venv/bin/python -m pytest`).
    venv_bin = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and venv_bin not in os.environ.get("PATH", ""):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    from torch.utils.cpp_extension import _get_build_directory, load

    def build() -> ModuleType:
        return load(
            name=name,
            sources=[str(p) for p in sources],
            extra_include_paths=[str(_HERE)],
            extra_cflags=["-O3", *cflags, "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )

    # torch marks a build in progress with a plain "lock" file and waits, without end, for
    # it to go: a process killed while building (a stopped `tessera serve`, a test run
    # interrupted) left every later start hanging here. Builds go through an flock, which
    # the OS drops with its holder, so whoever holds it knows that a "lock" file is stale.
    build_dir = Path(_get_build_directory(name, verbose=False))
    with open(build_dir / "tessera-build.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (build_dir / "lock").unlink(missing_ok=True)
        if _is_built(name, sources):
            return build()
        with Progress("compiling the native CPU kernels for this CPU", one_time=True):
            return build()


def _is_built(name: str, sources: list[Path]) -> bool:
    """Whether torch's extension cache holds a build of ``name`` newer than its sources (then
    loading it takes about a second and says nothing)."""
    from torch.utils.cpp_extension import _get_build_directory

    try:
        built = Path(_get_build_directory(name, verbose=False)) / f"{name}.so"
        newest = max(p.stat().st_mtime for p in [*sources, *_HERE.glob("*.h")])
        return built.stat().st_mtime >= newest
    except (OSError, RuntimeError):
        return False


@cache
def load_cpu_kernels() -> ModuleType | None:
    """The compiled extension module, or None when it cannot be built here."""
    try:
        return _build("tessera_cpu_kernels", _SOURCES, ["-march=native"])
    except Exception as e:  # any build failure means: use the PyTorch path
        log.warning("native CPU kernels unavailable, using the PyTorch paths: %s", e)
        return None


@cache
def load_block_linear_variant(isa: str) -> ModuleType:
    """block_linear built for one instruction set of ``BLOCK_LINEAR_ISAS`` (for tests: the
    module may hold instructions this CPU cannot run; ``cpu_runs`` says whether it can)."""
    cflags, _ = BLOCK_LINEAR_ISAS[isa]
    return _build(f"tessera_block_linear_{isa}", [_HERE / "block_linear_variant.cpp"], cflags)


def cpu_runs(isa: str) -> bool:
    """Whether this CPU runs the ``isa`` build of block_linear."""
    return set(BLOCK_LINEAR_ISAS[isa][1]) <= cpu_flags()
