"""The path every generation takes, for chat and completions, REST and gRPC alike:

admission (in-flight bound, rate limits) ▶ response cache ▶ retrieval ▶ routed
engine stream ▶ per-choice events ▶ usage charged, metrics, cache filled.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from engine.api import Prompt
from gateway.api.common import SamplingFields, Usage, make_usage, new_id, now
from gateway.engines.pool import RETRYABLE, EnginePool, RoutedStream, engine_error
from gateway.errors import from_engine_error

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_from(given: str | None) -> str:
    """The client's request id when it is a safe token (it goes into logs and gRPC
    metadata), else a fresh one."""
    if given and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    return secrets.token_hex(8)


@dataclass
class RequestContext:
    """Per-request facts the fronts fill in and the handlers report back through."""

    principal: Any
    request_id: str
    arrival: float = field(default_factory=time.perf_counter)
    bypass_cache: bool = False
    cache_status: str | None = None  # "hit", "miss", "bypass"; sent back as a header
    stages: dict[str, float] = field(default_factory=dict)
    semantic: tuple[str, Any] | None = None  # (scope, conversation vector) to store the answer


@dataclass
class TokenLogprobs:
    token: str
    logprob: float
    top: list[tuple[str, float]]
    token_id: int = 0


@dataclass
class ChoiceEvent:
    """New output of one choice."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class ChoiceResult:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class GenerationResult:
    id: str
    created: int
    choices: list[ChoiceResult]
    usage: Usage
    prompt_token_ids: list[int]
    citations: list[dict[str, Any]] | None = None


class Hooks(Protocol):
    """Admission, caching and metrics, provided by the gateway around the handlers."""

    async def admit(self, ctx: RequestContext, req: SamplingFields) -> Callable[[], None]:
        """Reserve capacity for the request (429 when none); returns the release call."""

    async def charge(self, ctx: RequestContext, tokens: int) -> None:
        """Add the tokens a request used to its key's budget."""

    async def cache_get(
        self, ctx: RequestContext, route: str, req: BaseModel
    ) -> dict[str, Any] | None:
        """A cached result for a deterministic request, or None."""

    async def cache_put(
        self, ctx: RequestContext, route: str, req: BaseModel, result: dict[str, Any]
    ) -> None:
        """Store a finished deterministic result."""

    def observe(
        self, ctx: RequestContext, route: str, result: GenerationResult | None, ttft: float | None
    ) -> None:
        """Record the request's metrics when it ends."""


def _result_to_cache(result: GenerationResult) -> dict[str, Any]:
    return {
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "token_ids": c.token_ids,
                "finish_reason": c.finish_reason,
                "logprobs": [[lp.token, lp.logprob, lp.top, lp.token_id] for lp in c.logprobs],
            }
            for c in result.choices
        ],
        "usage": result.usage.model_dump(),
        "prompt_token_ids": result.prompt_token_ids,
        "citations": result.citations,
    }


def _result_from_cache(data: dict[str, Any]) -> GenerationResult:
    choices = [
        ChoiceResult(
            index=c["index"],
            text=c["text"],
            token_ids=c["token_ids"],
            finish_reason=c["finish_reason"],
            logprobs=[
                TokenLogprobs(t, lp, [tuple(x) for x in top], tid)
                for t, lp, top, tid in c["logprobs"]
            ],
        )
        for c in data["choices"]
    ]
    return GenerationResult(
        id="",
        created=now(),
        choices=choices,
        usage=Usage(**data["usage"]),
        prompt_token_ids=data["prompt_token_ids"],
        citations=data.get("citations"),
    )


class Run:
    """One generation in progress (or a cache hit replayed): events, then a result."""

    def __init__(
        self,
        ctx: RequestContext,
        route: str,
        req: SamplingFields,
        hooks: Hooks,
        stream: RoutedStream | None,
        cached: GenerationResult | None,
        release: Callable[[], None],
        id_prefix: str,
        citations: list[dict[str, Any]] | None = None,
    ) -> None:
        self.ctx, self.route, self.req, self.hooks = ctx, route, req, hooks
        self.id = new_id(id_prefix)
        self._stream, self._cached, self._release = stream, cached, release
        self.citations = citations if cached is None else cached.citations
        self.choices = [ChoiceResult(i) for i in range(req.n)]
        self.usage = cached.usage if cached else make_usage(0, 0, 0)
        self.prompt_token_ids: list[int] = cached.prompt_token_ids if cached else []
        self.ttft: float | None = None
        self._done = False
        self._finished = False

    async def events(self) -> AsyncIterator[ChoiceEvent]:
        """Per-choice deltas until every choice finished; closing early aborts upstream."""
        try:
            if self._cached is not None:
                for c in self._cached.choices:
                    self.choices[c.index] = c
                    yield ChoiceEvent(c.index, c.text, c.token_ids, c.logprobs, c.finish_reason)
                self._done = True
                return
            assert self._stream is not None
            async for event in self._engine_events(self._stream):
                yield event
            self._done = True
        finally:
            await self._finish()

    async def _engine_events(self, stream: RoutedStream) -> AsyncIterator[ChoiceEvent]:
        try:
            async for out in stream:
                if self.ttft is None and any(d.token_ids for d in out.deltas):
                    self.ttft = time.perf_counter() - self.ctx.arrival
                    t = out.timings
                    if t.queued is not None:
                        self.ctx.stages["engine_queue"] = t.queued
                        if t.first_token is not None:
                            self.ctx.stages["prefill"] = t.first_token - t.queued
                self.prompt_token_ids = stream.prompt_token_ids
                self.usage = make_usage(
                    out.num_prompt_tokens, out.num_output_tokens, out.num_cached_tokens
                )
                for d in out.deltas:
                    lps = [
                        TokenLogprobs(
                            stream.token_text(tid),
                            lp.logprob,
                            [(stream.token_text(t), v) for t, v in lp.top],
                            tid,
                        )
                        for tid, lp in zip(d.token_ids, d.logprobs, strict=False)
                    ]
                    reason = d.finish_reason.value if d.finish_reason is not None else None
                    c = self.choices[d.index]
                    c.text += d.text
                    c.token_ids += d.token_ids
                    c.logprobs += lps
                    c.finish_reason = reason or c.finish_reason
                    yield ChoiceEvent(d.index, d.text, d.token_ids, lps, reason)
        except RETRYABLE as e:
            raise engine_error(e) from e
        except Exception as e:
            mapped = from_engine_error(e)
            if mapped is None:
                raise
            raise mapped from e

    async def collect(self) -> GenerationResult:
        async for _ in self.events():
            pass
        return self.result()

    def result(self) -> GenerationResult:
        return GenerationResult(
            self.id, now(), self.choices, self.usage, self.prompt_token_ids, self.citations
        )

    async def aclose(self) -> None:
        """Abandon the run (aborts upstream); safe to call more than once."""
        await self._finish()

    async def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._stream is not None:
            await self._stream.aclose()
        self._release()
        self._release = lambda: None
        if self._cached is None and self.usage.total_tokens:
            with contextlib.suppress(Exception):
                await self.hooks.charge(self.ctx, self.usage.total_tokens)
        complete = self._done and all(c.finish_reason in ("stop", "length") for c in self.choices)
        if complete and self._cached is None:
            await self.hooks.cache_put(
                self.ctx, self.route, self.req, _result_to_cache(self.result())
            )
        self.hooks.observe(self.ctx, self.route, self.result() if self._done else None, self.ttft)


Retriever = Callable[[RequestContext, Any, Prompt], Awaitable[tuple[Prompt, list[dict[str, Any]]]]]


class Generation:
    """Starts runs: the shared core of the chat and completions handlers."""

    def __init__(
        self,
        pool: EnginePool,
        hooks: Hooks,
        retriever: Retriever | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self.pool = pool
        self.hooks = hooks
        self.retriever = retriever
        self.request_timeout = request_timeout

    def context_length(self, model: str) -> int:
        return self.pool.require_model(model)

    async def start(
        self,
        ctx: RequestContext,
        req: SamplingFields,
        prompt: Prompt,
        key: str | None,
        logprobs: int | None,
        route: str,
    ) -> Run:
        max_len = self.context_length(req.model)
        params = req.sampling_params(max_len, logprobs)
        release = await self.hooks.admit(ctx, req)
        try:
            ctx.stages["gateway_queue"] = time.perf_counter() - ctx.arrival
            t0 = time.perf_counter()
            cached = await self.hooks.cache_get(ctx, route, req)
            ctx.stages["cache_lookup"] = time.perf_counter() - t0
            prefix = "chatcmpl" if route == "chat" else "cmpl"
            if cached is not None:
                return Run(
                    ctx, route, req, self.hooks, None, _result_from_cache(cached), release, prefix
                )
            citations = None
            if getattr(req, "rag", None) is not None and self.retriever is not None:
                t1 = time.perf_counter()
                prompt, citations = await self.retriever(ctx, req, prompt)
                ctx.stages["retrieval"] = time.perf_counter() - t1
            stream = await self.pool.generate(
                req.model, prompt, params, key, self.request_timeout, ctx.request_id
            )
        except BaseException as e:
            release()
            mapped = from_engine_error(e) if isinstance(e, Exception) else None
            if mapped is not None:
                raise mapped from e
            raise
        return Run(ctx, route, req, self.hooks, stream, None, release, prefix, citations)
