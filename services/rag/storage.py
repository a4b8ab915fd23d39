"""Crash-safe files of a collection: records, snapshots and the manifest that commits them.

A collection directory holds immutable files and one ``MANIFEST``:

- ``seg-<version>.rec``: one committed change (documents deleted, chunks added
  with their vectors);
- ``snap-<version>.rec`` (+ ``snap-<version>.faiss`` for HNSW): the whole
  collection as of that version;
- ``MANIFEST``: JSON naming the snapshot and the segments after it, and the
  collection's version.

Every file is written to a temp name, fsynced, renamed into place, and the
directory fsynced. A change is committed — and only then acknowledged — when
the new MANIFEST is renamed in. A process killed at any moment leaves the old
manifest (with files that all still exist) or the new one; files no manifest
names are leftovers of an uncommitted change and are removed at load. Each
record ends with a CRC32 so a damaged file is refused, never half-read.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"TSRAGREC"
FORMAT_VERSION = 1
MANIFEST = "MANIFEST"
_HEADER = struct.Struct("<8sIQ")  # magic, format version, JSON header length


class StorageError(Exception):
    """A collection file is missing, damaged, or of an unknown format."""


@dataclass
class Manifest:
    """What a collection consists of at one committed version."""

    name: str
    uid: str  # distinguishes a re-created collection of the same name (cache keys)
    version: int = 0
    snapshot: str | None = None
    segments: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def files(self) -> set[str]:
        names = {MANIFEST, *self.segments}
        if self.snapshot:
            names |= {self.snapshot, self.snapshot.replace(".rec", ".faiss")}
        return names


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Commit ``manifest`` (the rename is the commit point)."""
    atomic_write_bytes(directory / MANIFEST, json.dumps(asdict(manifest), indent=1).encode())


def read_manifest(directory: Path) -> Manifest:
    try:
        raw = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise StorageError(f"{directory / MANIFEST}: unreadable ({e})") from e
    if raw.get("format") != FORMAT_VERSION:
        raise StorageError(f"{directory}: manifest format {raw.get('format')!r} is not supported")
    return Manifest(**raw)


def encode_record(header: dict[str, Any], vectors: np.ndarray) -> bytes:
    """magic | format | header length | JSON header | float32 vectors | CRC32 of all before."""
    body = json.dumps(header, ensure_ascii=False).encode()
    payload = (
        _HEADER.pack(MAGIC, FORMAT_VERSION, len(body))
        + body
        + np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    )
    return payload + struct.pack("<I", zlib.crc32(payload))


def write_record(path: Path, header: dict[str, Any], vectors: np.ndarray) -> None:
    atomic_write_bytes(path, encode_record(header, vectors))


def read_record(path: Path, dimension: int) -> tuple[dict[str, Any], np.ndarray]:
    """(header, vectors [n, dimension]) of a record file, after checking its CRC."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StorageError(f"{path}: {e}") from e
    if len(data) < _HEADER.size + 4:
        raise StorageError(f"{path}: truncated")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise StorageError(f"{path}: checksum mismatch")
    magic, fmt, header_len = _HEADER.unpack_from(data)
    if magic != MAGIC or fmt != FORMAT_VERSION:
        raise StorageError(f"{path}: not a version-{FORMAT_VERSION} record")
    start = _HEADER.size
    header = json.loads(data[start : start + header_len])
    vectors = np.frombuffer(data[start + header_len : -4], dtype="<f4").astype(np.float32)
    return header, vectors.reshape(-1, dimension)


def remove_unreferenced(directory: Path, manifest: Manifest) -> list[str]:
    """Delete files no committed manifest names (leftovers of a crash); returns their names."""
    keep = manifest.files()
    removed = []
    for path in directory.iterdir():
        if path.is_file() and path.name not in keep:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
