"""An asyncio front for LLMEngine: one engine thread, per-request output streams.

The engine loop runs in its own thread so network handlers never wait for a
step, and a step never waits for the network. Commands (add, abort) reach the
thread through a queue and are applied between steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any, Protocol

import tessera
from engine.api import (
    ChatPrompt,
    EngineDeadError,
    EngineInfo,
    EngineLoad,
    InvalidRequestError,
    Prompt,
    RequestOutput,
    SamplingParams,
)
from engine.llm_engine import EngineStats, LLMEngine, StepStats

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]

    def put(self, item: RequestOutput | BaseException) -> None:
        # RuntimeError: the consumer's event loop is closed, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class StepObserver(Protocol):
    """Told about every engine step and request output, on the engine thread (metrics)."""

    def on_step(self, step: StepStats, stats: EngineStats) -> None:
        """Called after each step with what it did and the load after it."""

    def on_outputs(self, outputs: list[RequestOutput]) -> None:
        """Called with every request output: a step's, or an abort's final one."""


class RequestStream:
    """One accepted request's outputs; closing it early aborts the request."""

    def __init__(
        self, engine: AsyncEngine, request_id: str, prompt_token_ids: list[int], stream: _Stream
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self._engine = engine
        self._stream = stream
        self._finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._finished:
            raise StopAsyncIteration
        try:
            item = await self._stream.queue.get()
        except BaseException:  # cancelled while waiting: the client is gone
            self.close()
            raise
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        self._finished = item.finished
        return item

    def close(self) -> None:
        """Abort the request unless it already finished (idempotent)."""
        if not self._finished:
            self._finished = True
            self._engine.abort(self.request_id)


class AsyncEngine:
    """Streams RequestOutputs per request; cancelling the consumer aborts the request."""

    def __init__(
        self, engine: LLMEngine | Callable[[], LLMEngine], observer: StepObserver | None = None
    ) -> None:
        """Start the engine thread over ``engine``, or over the engine that ``engine()`` builds
        on that thread (blocking until it is built; its errors are raised here).

        Build it there: OpenMP keeps a worker team per thread that runs parallel regions, and
        with a second team (warm-up on one thread, steps on another) libgomp counts more
        threads than cores and stops spinning between regions; single-stream decode then ran
        at 42-57 instead of 110-130 tok/s here."""
        self.observer = observer
        self._commands: queue.Queue[Callable[[], object]] = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._stopped = threading.Event()
        factory = engine if not isinstance(engine, LLMEngine) else (lambda: engine)
        built: concurrent.futures.Future[LLMEngine] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(factory, built), name="tessera-engine", daemon=True
        )
        self._thread.start()
        self.engine = built.result()
        self._stats = self.engine.stats()
        self.created = int(time.time())
        """Unix time at which the model finished loading (the model's `created`)."""
        tokenizer = self.engine.tokenizer
        self._piece = functools.lru_cache(maxsize=65536)(
            lambda token_id: tokenizer.decode([token_id], skip_special_tokens=False)
        )

    # ---- the front callers use (any event loop) ------------------------------
    def render(self, prompt: Prompt) -> str | Seq[int]:
        """The prompt as the engine takes it: chat messages through the model's template.

        Raises InvalidRequestError for an empty conversation or a model without a chat
        template, jinja2.TemplateError for a template the messages break.
        """
        if not isinstance(prompt, ChatPrompt):
            return prompt
        if not prompt.messages:
            raise InvalidRequestError("the chat prompt has no messages")
        if self.engine.tokenizer.chat_template is None:
            raise InvalidRequestError(
                f"model {self.engine.bundle.name} has no chat template (a base model): use "
                "/v1/completions, or start the server with --chat-template FILE (a Jinja "
                "chat template)"
            )
        return self.engine.tokenizer.apply_chat_template(
            prompt.messages, prompt.add_generation_prompt
        )

    def tokenize(self, prompt: str | ChatPrompt, add_special_tokens: bool = True) -> list[int]:
        """The prompt's token ids; a chat through the model's template (which adds its own
        special tokens)."""
        if isinstance(prompt, ChatPrompt):
            return self.engine.tokenizer.encode(str(self.render(prompt)), add_special_tokens=False)
        return self.engine.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)

    def detokenize(self, token_ids: Seq[int]) -> str:
        """The text of token ids, special tokens included; InvalidRequestError for an id
        outside the vocabulary."""
        vocab = self.engine.bundle.config.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
        return self.engine.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        """One token's text, special tokens included (logprobs in API responses)."""
        return str(self._piece(token_id))

    def info(self, accepting: bool | None = None) -> EngineInfo:
        """The model, its limits and the load as of the last step; ``accepting`` overrides
        whether new work is taken (a pod that drains)."""
        core, s = self.engine, self._stats
        cap, max_waiting = core.capacity, core.config.scheduler.max_waiting
        return EngineInfo(
            model=core.bundle.name,
            model_source=core.bundle.source,
            backend=cap.backend,
            quantization=cap.quantization,
            device=cap.device,
            dtype=cap.dtype,
            max_model_len=cap.max_model_len,
            num_kv_blocks=cap.num_blocks,
            block_size=cap.block_size,
            max_num_seqs=cap.max_num_seqs,
            max_num_batched_tokens=cap.max_num_batched_tokens,
            max_waiting=max_waiting,
            accepting=self.is_running if accepting is None else accepting,
            created=self.created,
            version=tessera.__version__,
            load=EngineLoad(
                num_running=s.num_running,
                num_waiting=s.num_waiting,
                kv_usage=s.kv_usage,
                num_free_blocks=s.num_free_blocks,
                waiting_capacity_left=max(0, max_waiting - s.num_waiting),
            ),
        )

    # ---- public API (any event loop) -------------------------------------
    async def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        deadline: float | None = None,
    ) -> RequestStream:
        """Queue a request and return its output stream (with the prompt's token ids) once
        the engine accepted it.

        Raises InvalidRequestError / SamplingParamsError / QueueFullError when the
        engine refuses it. Past ``deadline`` (time.monotonic()) the request ends
        with finish reason ABORT.
        """
        if self._stopped.is_set():
            raise EngineDeadError("the engine has stopped")
        rid = request_id or f"req-{uuid.uuid4().hex}"
        prompt_ids = self.engine.tokenize_prompt(self.render(prompt))
        if params is not None and params.structured_outputs is not None:
            # compiled (or found in the cache) here, so the engine thread never waits for it
            await asyncio.to_thread(self.engine.grammars.compile, params.structured_outputs)
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        added: concurrent.futures.Future[None] = concurrent.futures.Future()

        def add() -> None:
            try:
                self.engine.add_request(prompt_ids, params, rid, priority, deadline)
            except BaseException as e:  # handed to the caller, not swallowed
                added.set_exception(e)
                return
            self._streams[rid] = stream
            added.set_result(None)

        self._commands.put(add)
        try:
            await asyncio.shield(asyncio.wrap_future(added))
        except asyncio.CancelledError:
            # the caller left while the engine was adding: abort whatever got added
            self.abort(rid)
            raise
        return RequestStream(self, rid, prompt_ids, stream)

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        deadline: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield one request's outputs step by step until it finishes (add_request + iterate)."""
        stream = await self.add_request(prompt, params, request_id, priority, deadline)
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

    def abort(self, request_id: str) -> None:
        """Abort a request; its blocks are freed before the next step."""
        self._commands.put(lambda: self._abort_now(request_id))

    async def abort_request(self, request_id: str) -> bool:
        """Abort a request and wait for it; True when it was in flight."""
        return bool(await self.call(lambda _: self._abort_now(request_id)))

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
    def _main(
        self, factory: Callable[[], LLMEngine], built: concurrent.futures.Future[LLMEngine]
    ) -> None:
        try:
            self.engine = factory()
        except BaseException as e:  # raised to the constructor's caller
            built.set_exception(e)
            return
        built.set_result(self.engine)
        self._run()

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
            self._observe(outputs)
        self._fail_all(EngineDeadError("the engine has stopped"))

    def _observe(self, outputs: list[RequestOutput], step: bool = True) -> None:
        if self.observer is None:
            return
        try:
            if step:
                self.observer.on_step(self.engine.last_step, self._stats)
            self.observer.on_outputs(outputs)
        except Exception:  # a metrics bug must not stop serving
            log.exception("step observer failed")

    def _abort_now(self, request_id: str) -> bool:
        stream = self._streams.pop(request_id, None)
        out = self.engine.abort(request_id)
        if out is None:
            return False
        if stream is not None:
            stream.put(out)
        self._observe([out], step=False)
        return True

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
