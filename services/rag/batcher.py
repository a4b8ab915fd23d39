"""Dynamic batching of concurrent embedding calls, as Triton's dynamic batcher does.

Callers await ``embed(texts)``; one worker task gathers queued requests into a
model call of at most ``max_batch_size`` texts, waiting at most
``max_queue_delay`` after the first queued text for more to arrive, and runs
the call in a worker thread so the event loop keeps serving. A request larger
than the batch limit is split across consecutive calls; its future resolves
when all of its rows are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from services.rag.embedder import Embedder
from services.rag.errors import RagUnavailableError


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future[np.ndarray]
    out: np.ndarray
    next_row: int = 0  # first text not yet handed to a batch
    done_rows: int = 0
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Coalesces concurrent ``embed`` calls into model batches (max size, max queue delay)."""

    def __init__(
        self,
        embedder: Embedder,
        max_batch_size: int,
        max_queue_delay: float,
        observe_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self._observe = observe_batch or (lambda size, seconds: None)
        self._queue: deque[_Request] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] unit vectors, computed in whatever batches the load allows."""
        if self._closed:
            raise RagUnavailableError("the embedder is shutting down")
        loop = asyncio.get_running_loop()
        out = np.empty((len(texts), self.embedder.dimension), dtype=np.float32)
        if not texts:
            return out
        if self._worker is None:
            self._worker = loop.create_task(self._run())
        request = _Request(list(texts), loop.create_future(), out)
        self._queue.append(request)
        self._wakeup.set()
        return await request.future

    async def close(self) -> None:
        """Fail queued requests and stop the worker."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._queue:
            req = self._queue.popleft()
            if not req.future.done():
                req.future.set_exception(RagUnavailableError("the embedder is shutting down"))

    def _pending_texts(self) -> int:
        return sum(len(r.texts) - r.next_row for r in self._queue)

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for company until the batch is full or the oldest text has waited enough.
            deadline = self._queue[0].enqueued + self.max_queue_delay
            while self._pending_texts() < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            await self._run_batch(self._take_batch())

    def _take_batch(self) -> list[tuple[_Request, int, int]]:
        """(request, first row, end row) slices adding up to at most max_batch_size texts."""
        batch: list[tuple[_Request, int, int]] = []
        room = self.max_batch_size
        for req in self._queue:
            if room == 0:
                break
            take = min(room, len(req.texts) - req.next_row)
            if take > 0:
                batch.append((req, req.next_row, req.next_row + take))
                req.next_row += take
                room -= take
        while self._queue and self._queue[0].next_row == len(self._queue[0].texts):
            self._queue.popleft()
        return batch

    async def _run_batch(self, batch: list[tuple[_Request, int, int]]) -> None:
        live = [(r, a, b) for r, a, b in batch if not r.future.done()]  # skip cancelled callers
        texts = [t for r, a, b in live for t in r.texts[a:b]]
        if not texts:
            return
        t0 = time.perf_counter()
        try:
            vectors = await asyncio.to_thread(self.embedder.embed, texts)
        except Exception as e:  # the model failed: every caller in the batch learns why
            for r, _, _ in live:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        self._observe(len(texts), time.perf_counter() - t0)
        row = 0
        for r, a, b in live:
            r.out[a:b] = vectors[row : row + (b - a)]
            row += b - a
            r.done_rows += b - a
            if r.done_rows == len(r.texts) and not r.future.done():
                r.future.set_result(r.out)
