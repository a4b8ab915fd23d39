"""One collection: its chunks, their vector index, and the files that make it durable.

Writers (ingest, delete) are serialised by a write lock and run in a worker
thread: the change goes to disk and is committed (see storage) before it is
applied in memory, so everything a caller was told succeeded survives a crash.
Readers take the state lock only while searching the in-memory index.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.rag import storage
from services.rag.config import IndexConfig
from services.rag.errors import CollectionNotFoundError, DocumentNotFoundError, InvalidInputError
from services.rag.index import VectorIndex
from services.rag.results import Filters, MetadataValue
from services.rag.storage import Manifest

# Snapshot once this many chunks were added since the last one (and at least as many as it has).
_SNAPSHOT_MIN_CHUNKS = 4096


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk: its document, its place in the document, text and metadata."""

    document_id: str
    index: int
    text: str
    metadata: dict[str, MetadataValue]

    @property
    def chunk_id(self) -> str:
        return f"{self.document_id}#{self.index}"

    def to_json(self) -> dict[str, Any]:
        return {"doc": self.document_id, "i": self.index, "text": self.text, "meta": self.metadata}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ChunkRecord:
        return cls(obj["doc"], obj["i"], obj["text"], obj["meta"])


@dataclass(frozen=True)
class ScoredChunk:
    """A search hit."""

    chunk: ChunkRecord
    score: float


@dataclass(frozen=True)
class CollectionStats:
    """What a collection holds and how it is indexed."""

    name: str
    uid: str
    version: int
    documents: int
    chunks: int
    dimension: int
    index_type: str
    dead_positions: int
    segments: int
    disk_bytes: int
    metadata: dict[str, Any]


def _key(value: MetadataValue) -> str:
    return json.dumps(value)


def _disk_bytes(directory: Path) -> int:
    total = 0
    for path in directory.glob("*"):
        with contextlib.suppress(FileNotFoundError):  # replaced by a concurrent snapshot
            total += path.stat().st_size
    return total


class Collection:
    """Chunks and vectors of one collection, persisted in its own directory."""

    def __init__(self, directory: Path, manifest: Manifest, dimension: int, config: IndexConfig):
        self.directory = directory
        self.manifest = manifest
        self.dimension = dimension
        self.config = config
        self.index = VectorIndex(dimension, config)
        self._chunks: list[ChunkRecord | None] = []  # by position
        self._docs: dict[str, list[int]] = {}
        self._by_meta: dict[tuple[str, str], list[int]] = defaultdict(list)
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._positions_at_snapshot = 0
        self.closed = False

    # ---- lifecycle -------------------------------------------------------
    @classmethod
    def create(
        cls, directory: Path, name: str, dimension: int, config: IndexConfig, metadata: dict
    ) -> Collection:
        """Make the directory (atomically: built under a temp name, then renamed)."""
        manifest = Manifest(name=name, uid=uuid.uuid4().hex, metadata=dict(metadata))
        manifest.metadata.setdefault("created", int(time.time()))
        tmp = directory.parent / f".creating-{manifest.uid}"
        tmp.mkdir(parents=True)
        storage.write_manifest(tmp, manifest)
        tmp.rename(directory)
        storage.fsync_dir(directory.parent)
        return cls(directory, manifest, dimension, config)

    @classmethod
    def load(cls, directory: Path, dimension: int, config: IndexConfig) -> Collection:
        """The committed state: snapshot, then every segment after it, in order."""
        manifest = storage.read_manifest(directory)
        col = cls(directory, manifest, dimension, config)
        if manifest.snapshot:
            col._load_snapshot(directory / manifest.snapshot)
        for name in manifest.segments:
            header, vectors = storage.read_record(directory / name, dimension)
            col._apply(header, vectors)
        storage.remove_unreferenced(directory, manifest)
        if col.index.needs_rebuild():
            col._swap_in(*col.index.rebuilt())
        return col

    # ---- writes (call from a worker thread) --------------------------------
    def commit(self, delete_documents: list[str], chunks: list[ChunkRecord], vectors: np.ndarray):
        """Durably delete documents and add chunks as one new version; returns the version."""
        with self._write_lock:
            if self.closed:
                raise CollectionNotFoundError(f"collection {self.manifest.name!r} was deleted")
            version = self.manifest.version + 1
            header = {
                "version": version,
                "delete": [d for d in delete_documents if d in self._docs],
                "chunks": [c.to_json() for c in chunks],
            }
            segment = f"seg-{version:010d}.rec"
            storage.write_record(self.directory / segment, header, vectors)
            manifest = Manifest(**{**self.manifest.__dict__, "version": version})
            manifest.segments = [*self.manifest.segments, segment]
            storage.write_manifest(self.directory, manifest)  # committed
            self.manifest = manifest
            with self._state_lock:
                self._apply(header, vectors)
            if self.index.needs_rebuild():
                self._swap_in(*self.index.rebuilt())
            if self._snapshot_due():
                self._write_snapshot()
            return version

    def delete_document(self, document_id: str) -> tuple[int, int]:
        """Durably remove a document's chunks; returns (chunks removed, new version)."""
        with self._state_lock:
            positions = self._docs.get(document_id)
        if positions is None:
            raise DocumentNotFoundError(f"no document {document_id!r} in {self.manifest.name!r}")
        version = self.commit([document_id], [], np.empty((0, self.dimension), np.float32))
        return len(positions), version

    @contextlib.contextmanager
    def closing(self) -> Iterator[None]:
        """Wait for a commit in progress, then refuse all later ones (collection deletion)."""
        with self._write_lock:
            self.closed = True
            yield

    def has_document(self, document_id: str) -> bool:
        return document_id in self._docs

    # ---- reads -------------------------------------------------------------
    def search(self, query: np.ndarray, top_k: int, filters: Filters | None) -> list[ScoredChunk]:
        """Best ``top_k`` live chunks for a unit query vector, matching every filter."""
        with self._state_lock:
            allowed = self._filter_mask(filters) if filters else None
            hits = self.index.search(query, top_k, allowed)
            out = []
            for score, pos in zip(hits.scores, hits.positions, strict=True):
                chunk = self._chunks[int(pos)]
                if chunk is not None:
                    out.append(ScoredChunk(chunk, float(score)))
            return out

    def stats(self) -> CollectionStats:
        disk = _disk_bytes(self.directory)
        with self._state_lock:
            return CollectionStats(
                name=self.manifest.name,
                uid=self.manifest.uid,
                version=self.manifest.version,
                documents=len(self._docs),
                chunks=self.index.live,
                dimension=self.dimension,
                index_type=self.index.kind,
                dead_positions=self.index.size - self.index.live,
                segments=len(self.manifest.segments),
                disk_bytes=disk,
                metadata=dict(self.manifest.metadata),
            )

    # ---- internals ---------------------------------------------------------
    def _apply(self, header: dict[str, Any], vectors: np.ndarray) -> None:
        for doc in header["delete"]:
            positions = self._docs.pop(doc, [])
            self.index.remove(np.asarray(positions, dtype=np.int64))
            for pos in positions:
                self._chunks[pos] = None
        records = [ChunkRecord.from_json(c) for c in header["chunks"]]
        if not records:
            return
        added = self.index.add(vectors)
        for record, pos in zip(records, added.tolist(), strict=True):
            self._chunks.append(record)
            self._docs.setdefault(record.document_id, []).append(pos)
            self._index_metadata(record, pos)

    def _index_metadata(self, record: ChunkRecord, pos: int) -> None:
        for key, value in record.metadata.items():
            self._by_meta[(key, _key(value))].append(pos)

    def _filter_mask(self, filters: Filters) -> np.ndarray:
        mask = np.ones(self.index.size, dtype=bool)
        for key, wanted in filters.items():
            values = wanted if isinstance(wanted, list) else [wanted]
            match = np.zeros(self.index.size, dtype=bool)
            for value in values:
                if not isinstance(value, str | int | float | bool):
                    raise InvalidInputError(
                        f"filter {key!r}: values must be strings, numbers or booleans", "filters"
                    )
                if key == "document_id":
                    match[self._docs.get(str(value), [])] = True
                else:
                    match[self._by_meta.get((key, _key(value)), [])] = True
            mask &= match
        return mask

    def _swap_in(self, index: VectorIndex, remap: np.ndarray) -> None:
        """Replace the index by a rebuilt one, renumbering chunk positions to match."""
        chunks: list[ChunkRecord | None] = [None] * index.size
        for old, record in enumerate(self._chunks):
            if record is not None and remap[old] >= 0:
                chunks[int(remap[old])] = record
        with self._state_lock:
            self.index = index
            self._chunks = chunks
            self._reindex()

    def _reindex(self) -> None:
        self._docs = {}
        self._by_meta = defaultdict(list)
        for pos, record in enumerate(self._chunks):
            if record is not None:
                self._docs.setdefault(record.document_id, []).append(pos)
                self._index_metadata(record, pos)

    def _snapshot_due(self) -> bool:
        added = self.index.size - self._positions_at_snapshot
        if len(self.manifest.segments) >= self.config.compact_segments:
            return True
        return added >= _SNAPSHOT_MIN_CHUNKS and added >= self._positions_at_snapshot

    def _write_snapshot(self) -> None:
        """Write the whole collection as of this version, commit it, drop what it replaces."""
        version = self.manifest.version
        name = f"snap-{version:010d}.rec"
        header = {
            "version": version,
            "kind": self.index.kind,
            "chunks": [c.to_json() if c is not None else None for c in self._chunks],
        }
        faiss_bytes = self.index.serialize()
        if faiss_bytes is not None:
            storage.atomic_write_bytes(self.directory / name.replace(".rec", ".faiss"), faiss_bytes)
        storage.write_record(self.directory / name, header, self.index.vectors)
        manifest = Manifest(**{**self.manifest.__dict__, "snapshot": name, "segments": []})
        storage.write_manifest(self.directory, manifest)
        self.manifest = manifest
        self._positions_at_snapshot = self.index.size
        storage.remove_unreferenced(self.directory, manifest)

    def _load_snapshot(self, path: Path) -> None:
        header, vectors = storage.read_record(path, self.dimension)
        faiss_path = path.with_suffix(".faiss")
        faiss_bytes = faiss_path.read_bytes() if faiss_path.is_file() else None
        chunks = [ChunkRecord.from_json(c) if c is not None else None for c in header["chunks"]]
        alive = np.array([c is not None for c in chunks], dtype=bool)
        self.index = VectorIndex.restore(
            self.dimension, self.config, vectors, alive, header["kind"], faiss_bytes
        )
        self._chunks = chunks
        self._reindex()
        self._positions_at_snapshot = len(chunks)
