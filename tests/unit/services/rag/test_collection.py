"""A collection on disk: commits survive reloads, crashes leave no trace, damage is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.rag import storage
from services.rag.collection import ChunkRecord, Collection
from services.rag.config import IndexConfig
from services.rag.errors import CollectionNotFoundError, DocumentNotFoundError

DIM = 8


def vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_doc(col: Collection, doc: str, n: int, seed: int, **meta: str) -> np.ndarray:
    vecs = vectors(n, seed)
    chunks = [ChunkRecord(doc, i, f"{doc} chunk {i}", dict(meta)) for i in range(n)]
    col.commit([doc], chunks, vecs)
    return vecs


def new_collection(tmp_path: Path, **index: int) -> Collection:
    return Collection.create(tmp_path / "c", "c", DIM, IndexConfig(**index), {})


def test_commits_survive_a_reload(tmp_path: Path):
    col = new_collection(tmp_path)
    a = add_doc(col, "a", 3, 1, lang="en")
    add_doc(col, "b", 2, 2, lang="fr")
    col.delete_document("b")
    again = Collection.load(col.directory, DIM, col.config)
    stats = again.stats()
    assert (stats.version, stats.documents, stats.chunks) == (3, 1, 3)
    hit = again.search(a[1], 1, None)[0]
    assert hit.chunk.chunk_id == "a#1" and hit.chunk.metadata == {"lang": "en"}
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_reingesting_a_document_replaces_its_chunks(tmp_path: Path):
    col = new_collection(tmp_path)
    add_doc(col, "a", 3, 1)
    fresh = add_doc(col, "a", 1, 9)
    assert col.stats().chunks == 1
    assert [h.chunk.chunk_id for h in col.search(fresh[0], 5, None)] == ["a#0"]


def test_filters_match_metadata_and_document_id(tmp_path: Path):
    col = new_collection(tmp_path)
    add_doc(col, "a", 2, 1, lang="en")
    add_doc(col, "b", 2, 2, lang="fr")
    q = vectors(1, 5)[0]
    assert {h.chunk.document_id for h in col.search(q, 10, {"lang": "fr"})} == {"b"}
    assert {h.chunk.document_id for h in col.search(q, 10, {"lang": ["fr", "en"]})} == {"a", "b"}
    assert {h.chunk.document_id for h in col.search(q, 10, {"document_id": "a"})} == {"a"}
    assert col.search(q, 10, {"lang": "de"}) == []


def test_snapshots_compact_segments_and_reload_identically(tmp_path: Path):
    col = new_collection(tmp_path, compact_segments=3, approximate_threshold=20)
    for i in range(7):
        add_doc(col, f"d{i}", 5, i)
    col.delete_document("d0")
    assert col.manifest.snapshot is not None and len(col.manifest.segments) < 3
    names = {p.name for p in col.directory.iterdir()}
    assert names <= col.manifest.files()  # replaced snapshots and segments were removed
    again = Collection.load(col.directory, DIM, col.config)
    assert again.stats().index_type == "hnsw" and again.stats().chunks == 30
    q = vectors(1, 3)[0]
    assert [h.chunk.chunk_id for h in again.search(q, 5, None)] == [
        h.chunk.chunk_id for h in col.search(q, 5, None)
    ]


def test_uncommitted_files_are_removed_at_load(tmp_path: Path):
    col = new_collection(tmp_path)
    add_doc(col, "a", 2, 1)
    # a crash after writing a segment but before the manifest named it
    storage.write_record(col.directory / "seg-0000000002.rec", {"delete": [], "chunks": []}, [])
    (col.directory / ".MANIFEST.x.tmp").write_text("half")
    again = Collection.load(col.directory, DIM, col.config)
    assert again.stats().version == 1
    assert sorted(p.name for p in col.directory.iterdir()) == ["MANIFEST", "seg-0000000001.rec"]


def test_damaged_record_is_refused_not_half_read(tmp_path: Path):
    col = new_collection(tmp_path)
    add_doc(col, "a", 2, 1)
    seg = col.directory / col.manifest.segments[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(storage.StorageError, match="checksum"):
        Collection.load(col.directory, DIM, col.config)


def test_deleting_a_missing_document_is_an_error(tmp_path: Path):
    col = new_collection(tmp_path)
    with pytest.raises(DocumentNotFoundError):
        col.delete_document("nope")


def test_a_closed_collection_refuses_commits(tmp_path: Path):
    col = new_collection(tmp_path)
    with col.closing():
        pass
    with pytest.raises(CollectionNotFoundError):
        add_doc(col, "a", 1, 1)
