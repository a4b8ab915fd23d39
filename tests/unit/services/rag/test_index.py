"""FAISS index per collection: exact while small, HNSW past the threshold, deletes, filters."""

from __future__ import annotations

import numpy as np

from services.rag.config import IndexConfig
from services.rag.index import VectorIndex

DIM = 32


def unit(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, q: np.ndarray, k: int, alive: np.ndarray) -> list[int]:
    scores = np.where(alive, vectors @ q, -np.inf)
    return [int(i) for i in np.argsort(-scores)[:k]]


def test_flat_search_is_exact():
    index = VectorIndex(DIM, IndexConfig())
    vectors = unit(500)
    index.add(vectors)
    q = unit(1, seed=1)[0]
    hits = index.search(q, 10)
    assert index.kind == "flat"
    assert hits.positions.tolist() == exact_top(vectors, q, 10, np.ones(500, bool))
    np.testing.assert_allclose(hits.scores, vectors[hits.positions] @ q, rtol=1e-5)


def test_removed_positions_never_match():
    index = VectorIndex(DIM, IndexConfig())
    vectors = unit(100)
    index.add(vectors)
    q = vectors[7]
    index.remove(np.array([7, 8]))
    hits = index.search(q, 100)
    assert 7 not in hits.positions and 8 not in hits.positions
    assert len(hits.positions) == 98 and index.live == 98


def test_allowed_mask_restricts_results_small_and_large():
    index = VectorIndex(DIM, IndexConfig())
    vectors = unit(6000)
    index.add(vectors)
    q = unit(1, seed=2)[0]
    for allowed_count in (50, 5000):  # exact subset product, then FAISS with a selector
        allowed = np.zeros(6000, bool)
        allowed[np.random.default_rng(3).choice(6000, allowed_count, replace=False)] = True
        hits = index.search(q, 5, allowed)
        assert hits.positions.tolist() == exact_top(vectors, q, 5, allowed)


def test_switches_to_hnsw_past_the_threshold_with_high_recall():
    config = IndexConfig(approximate_threshold=1000)
    index = VectorIndex(DIM, config)
    vectors = unit(3000)
    index.add(vectors)
    assert index.needs_rebuild()
    index, remap = index.rebuilt()
    assert index.kind == "hnsw" and remap.tolist() == list(range(3000))
    found = 0
    for seed in range(20):
        q = unit(1, seed=100 + seed)[0]
        found += len(
            set(index.search(q, 10).positions.tolist())
            & set(exact_top(vectors, q, 10, np.ones(3000, bool)))
        )
    assert found / 200 >= 0.95


def test_rebuild_drops_dead_positions_once_a_quarter_is_dead():
    index = VectorIndex(DIM, IndexConfig())
    vectors = unit(100)
    index.add(vectors)
    index.remove(np.arange(20))
    assert not index.needs_rebuild()
    index.remove(np.arange(20, 30))
    assert index.needs_rebuild()
    fresh, remap = index.rebuilt()
    assert fresh.size == fresh.live == 70
    assert remap[:30].tolist() == [-1] * 30 and remap[30] == 0
    np.testing.assert_array_equal(fresh.vectors[0], vectors[30])


def test_hnsw_survives_serialize_and_restore():
    config = IndexConfig(approximate_threshold=10)
    index, _ = _grown(config, unit(200))
    assert index.kind == "hnsw"
    alive = index.alive.copy()
    alive[3] = False
    restored = VectorIndex.restore(DIM, config, index.vectors, alive, "hnsw", index.serialize())
    q = index.vectors[3]
    assert 3 not in restored.search(q, 5).positions
    assert restored.search(index.vectors[4], 1).positions.tolist() == [4]


def _grown(config: IndexConfig, vectors: np.ndarray) -> tuple[VectorIndex, np.ndarray]:
    index = VectorIndex(DIM, config)
    index.add(vectors)
    return index.rebuilt()
