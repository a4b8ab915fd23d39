"""An asyncio front for LLMEngine: one engine thread, per-request output streams.

The engine loop runs in its own thread so network handlers never wait for a
step, and a step never waits for the network. Commands (add, abort) reach the
thread through a queue and are applied between steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

from engine.llm_engine import EngineStats, LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine thread stopped; in-flight and new requests fail with this."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]

    def put(self, item: RequestOutput | BaseException) -> None:
        # RuntimeError: the consumer's event loop is closed, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    """Streams RequestOutputs per request; cancelling the consumer aborts the request."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._stopped = threading.Event()
        self._stats = engine.stats()
        self._thread = threading.Thread(target=self._run, name="tessera-engine", daemon=True)
        self._thread.start()

    # ---- public API (any event loop) -------------------------------------
    async def generate(
        self,
        prompt: str | Seq[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        deadline: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield this request's outputs step by step until it finishes.

        Raises InvalidRequestError / QueueFullError before the first output
        when the engine refuses the request. Past ``deadline`` (time.monotonic())
        the request ends with finish reason ABORT.
        """
        if self._stopped.is_set():
            raise EngineDeadError("the engine has stopped")
        rid = request_id or f"req-{uuid.uuid4().hex}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        added: concurrent.futures.Future[None] = concurrent.futures.Future()

        def add() -> None:
            try:
                self.engine.add_request(prompt, params, rid, priority, deadline)
            except BaseException as e:  # handed to the caller, not swallowed
                added.set_exception(e)
                return
            self._streams[rid] = stream
            added.set_result(None)

        self._commands.put(add)
        await asyncio.wrap_future(added)
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        """Abort a request; its blocks are freed before the next step."""

        def do_abort() -> None:
            stream = self._streams.pop(request_id, None)
            out = self.engine.abort(request_id)
            if stream is not None and out is not None:
                stream.put(out)

        self._commands.put(do_abort)

    async def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run fn(engine) on the engine thread between steps and return its result."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(self.engine))
            except BaseException as e:
                fut.set_exception(e)

        self._commands.put(run)
        return await asyncio.wrap_future(fut)

    def stats(self) -> EngineStats:
        """Load figures as of the last step (cheap, never waits for the engine)."""
        return self._stats

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still in flight end with EngineDeadError."""
        self._stopped.set()
        self._commands.put(lambda: None)
        self._thread.join(timeout)

    # ---- engine thread ---------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            self._drain_commands(block=not self.engine.has_unfinished())
            if self._stopped.is_set() or not self.engine.has_unfinished():
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:
                log.exception("engine step failed; failing in-flight requests")
                self._fail_all(e)
                continue
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is None:
                    continue
                if out.finished:
                    del self._streams[out.request_id]
                stream.put(out)
            self._stats = self.engine.stats()
        self._fail_all(EngineDeadError("the engine has stopped"))

    def _drain_commands(self, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            cmd()
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
        self._stats = self.engine.stats()

    def _fail_all(self, error: BaseException) -> None:
        for rid, stream in list(self._streams.items()):
            self.engine.abort(rid)
            stream.put(error)
        self._streams.clear()
