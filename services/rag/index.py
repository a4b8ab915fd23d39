"""A collection's vectors under FAISS: exact inner product while small, HNSW past a size.

Vectors live at positions 0..n-1 in insertion order; FAISS labels are those
positions. A delete marks its positions dead (HNSW cannot remove points); dead
positions are excluded from searches through a bitmap selector and dropped when
the index is rebuilt, which happens when it switches to HNSW or when a quarter
of the positions are dead. A rebuild makes a new index with renumbered
positions, so searches go on against the old one while it builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

from services.rag.config import IndexConfig

# faiss is a SWIG module: mypy sees few of its classes and none of their attributes.
_faiss: Any = faiss

IndexKind = Literal["flat", "hnsw"]
# Below this many candidates a filtered search is one exact matrix product.
_EXACT_SUBSET = 4096
_DEAD_FRACTION_REBUILD = 0.25


@dataclass(frozen=True)
class SearchHits:
    """Best-first scores (inner product = cosine on unit vectors) and their positions."""

    scores: np.ndarray  # [k] float32
    positions: np.ndarray  # [k] int64


class VectorIndex:
    """Unit vectors at positions, searchable by inner product; flat or HNSW, chosen by size."""

    def __init__(self, dimension: int, config: IndexConfig) -> None:
        self.dimension = dimension
        self.config = config
        self._vectors = np.empty((0, dimension), dtype=np.float32)  # [capacity, dim]
        self._alive = np.empty(0, dtype=bool)  # [capacity]
        self.size = 0  # positions used, dead ones included
        self.live = 0
        self.kind: IndexKind = "flat"
        self._faiss: faiss.Index = faiss.IndexFlatIP(dimension)

    # ---- contents --------------------------------------------------------
    @property
    def vectors(self) -> np.ndarray:
        return self._vectors[: self.size]

    @property
    def alive(self) -> np.ndarray:
        return self._alive[: self.size]

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append unit vectors [n, dim]; returns their positions."""
        n = len(vectors)
        self._reserve(self.size + n)
        first = self.size
        self._vectors[first : first + n] = vectors
        self._alive[first : first + n] = True
        self.size += n
        self.live += n
        self._faiss.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return np.arange(first, first + n, dtype=np.int64)

    def remove(self, positions: np.ndarray) -> None:
        """Mark positions dead; they stop matching at once."""
        positions = positions[self._alive[positions]]
        self._alive[positions] = False
        self.live -= len(positions)

    def needs_rebuild(self) -> bool:
        """True when the index should change kind or shed its dead positions."""
        if self.kind == "flat" and self.live > self.config.approximate_threshold:
            return True
        dead = self.size - self.live
        return dead > 0 and dead >= _DEAD_FRACTION_REBUILD * self.size

    def rebuilt(self) -> tuple[VectorIndex, np.ndarray]:
        """A new index of the live vectors (HNSW if large) and the old→new position map."""
        keep = np.flatnonzero(self.alive)
        remap = np.full(self.size, -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep), dtype=np.int64)
        fresh = VectorIndex(self.dimension, self.config)
        fresh.kind = "hnsw" if len(keep) > self.config.approximate_threshold else "flat"
        fresh._faiss = fresh._empty_faiss(fresh.kind)
        if len(keep):
            fresh.add(self.vectors[keep])
        return fresh, remap

    # ---- search ----------------------------------------------------------
    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> SearchHits:
        """Top-k live positions by inner product with ``query`` [dim]; ``allowed``: [size] mask."""
        mask = self.alive if allowed is None else (allowed & self.alive)
        candidates = self.live if allowed is None else int(mask.sum())
        k = min(k, candidates)
        if k <= 0:
            return SearchHits(np.empty(0, np.float32), np.empty(0, np.int64))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if allowed is not None and candidates <= _EXACT_SUBSET:
            subset = np.flatnonzero(mask)
            scores = self.vectors[subset] @ q[0]  # [candidates]
            top = np.argsort(-scores, kind="stable")[:k]
            return SearchHits(scores[top].astype(np.float32), subset[top])
        # The bitmap and selector must stay referenced until the search returns.
        bits = None if candidates == self.size else np.packbits(mask, bitorder="little")
        selector = None if bits is None else faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bits))
        params = self._search_params(selector)
        scores, labels = self._faiss.search(q, k, params=params)
        found = labels[0] >= 0
        return SearchHits(scores[0][found], labels[0][found].astype(np.int64))

    # ---- persistence -----------------------------------------------------
    def serialize(self) -> bytes | None:
        """The FAISS structure worth saving (HNSW); a flat index is rebuilt from vectors."""
        if self.kind == "flat":
            return None
        return bytes(faiss.serialize_index(self._faiss))

    @classmethod
    def restore(
        cls,
        dimension: int,
        config: IndexConfig,
        vectors: np.ndarray,
        alive: np.ndarray,
        kind: IndexKind,
        faiss_bytes: bytes | None,
    ) -> VectorIndex:
        """An index over saved vectors and liveness, reusing a saved HNSW structure if given."""
        index = cls(dimension, config)
        index.kind = kind
        if faiss_bytes is not None:
            index._faiss = faiss.deserialize_index(np.frombuffer(faiss_bytes, dtype=np.uint8))
            if index._faiss.ntotal != len(vectors):
                raise ValueError("saved FAISS index does not match the saved vectors")
            _hnsw(index._faiss).efSearch = config.hnsw_ef_search
        else:
            index._faiss = index._empty_faiss(kind)
            index._faiss.add(np.ascontiguousarray(vectors, dtype=np.float32))
        index._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index._alive = alive.copy()
        index.size = len(vectors)
        index.live = int(alive.sum())
        return index

    # ---- helpers ---------------------------------------------------------
    def _empty_faiss(self, kind: IndexKind) -> faiss.Index:
        if kind == "flat":
            return faiss.IndexFlatIP(self.dimension)
        index = faiss.IndexHNSWFlat(self.dimension, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        _hnsw(index).efConstruction = self.config.hnsw_ef_construction
        _hnsw(index).efSearch = self.config.hnsw_ef_search
        return index

    def _search_params(self, selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        if self.kind == "hnsw":
            return _faiss.SearchParametersHNSW(sel=selector, efSearch=self.config.hnsw_ef_search)
        return None if selector is None else _faiss.SearchParameters(sel=selector)

    def _reserve(self, n: int) -> None:
        if n <= len(self._vectors):
            return
        capacity = max(n, 2 * len(self._vectors), 1024)
        vectors = np.empty((capacity, self.dimension), dtype=np.float32)
        vectors[: self.size] = self._vectors[: self.size]
        alive = np.zeros(capacity, dtype=bool)
        alive[: self.size] = self._alive[: self.size]
        self._vectors, self._alive = vectors, alive


def _hnsw(index: faiss.Index) -> Any:
    return _faiss.downcast_index(index).hnsw
