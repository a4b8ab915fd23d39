"""Dynamic batching: concurrent calls share model batches within size and delay limits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from services.rag.batcher import DynamicBatcher


class RecordingEmbedder:
    """Deterministic vectors (first coordinate = text length) and a log of model calls."""

    model_name = "recording"
    dimension = 4
    max_seq_length = 16

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self.lock:
            self.batches.append(list(texts))
        time.sleep(self.delay)
        if self.fail_on in texts:
            raise RuntimeError("model failed")
        return np.array([[len(t), 0, 0, 1] for t in texts], dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return []


async def test_concurrent_calls_are_coalesced_up_to_max_batch_size():
    model = RecordingEmbedder()
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay=0.05)
    texts = ["a" * n for n in range(1, 11)]
    results = await asyncio.gather(*(batcher.embed([t]) for t in texts))
    assert [r[0, 0] for r in results] == [len(t) for t in texts]
    assert [len(b) for b in model.batches] == [4, 4, 2]
    await batcher.close()


async def test_a_lone_call_waits_at_most_the_queue_delay():
    model = RecordingEmbedder()
    batcher = DynamicBatcher(model, max_batch_size=64, max_queue_delay=0.02)
    t0 = time.perf_counter()
    await batcher.embed(["alone"])
    assert time.perf_counter() - t0 < 0.5
    assert model.batches == [["alone"]]
    await batcher.close()


async def test_large_request_is_split_across_batches_in_order():
    model = RecordingEmbedder()
    batcher = DynamicBatcher(model, max_batch_size=3, max_queue_delay=0.0)
    texts = ["x" * n for n in range(1, 9)]
    out = await batcher.embed(texts)
    assert out[:, 0].tolist() == [float(len(t)) for t in texts]
    assert [len(b) for b in model.batches] == [3, 3, 2]
    await batcher.close()


async def test_model_failure_reaches_every_caller_of_that_batch_only():
    model = RecordingEmbedder(fail_on="bad")
    batcher = DynamicBatcher(model, max_batch_size=2, max_queue_delay=0.05)
    results = await asyncio.gather(
        batcher.embed(["bad"]),
        batcher.embed(["ok"]),
        batcher.embed(["fine"]),
        return_exceptions=True,
    )
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)
    assert isinstance(results[2], np.ndarray)
    await batcher.close()


async def test_cancelled_caller_does_not_disturb_the_others():
    model = RecordingEmbedder(delay=0.05)
    batcher = DynamicBatcher(model, max_batch_size=2, max_queue_delay=0.0)
    first = asyncio.create_task(batcher.embed(["first"]))
    await asyncio.sleep(0.01)  # "first" is in the model now
    doomed = asyncio.create_task(batcher.embed(["doomed"]))
    kept = asyncio.create_task(batcher.embed(["kept"]))
    await asyncio.sleep(0)
    doomed.cancel()
    assert (await kept)[0, 0] == 4.0
    assert (await first)[0, 0] == 5.0
    assert ["doomed"] not in model.batches
    await batcher.close()


async def test_closed_batcher_refuses_work():
    from services.rag.errors import RagUnavailableError

    batcher = DynamicBatcher(RecordingEmbedder(), max_batch_size=2, max_queue_delay=0.0)
    await batcher.close()
    with pytest.raises(RagUnavailableError):
        await batcher.embed(["late"])
