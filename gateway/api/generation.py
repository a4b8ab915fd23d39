"""The path every generation takes, for chat and completions, REST and gRPC alike:

admission (in-flight bound, rate limits) ▶ caches ▶ retrieval ▶ routed engine stream ▶
per-choice events ▶ usage charged, metrics, cache filled.

Each endpoint's handler turns its request into a GenerationRequest; nothing here reads the
endpoint's own schema.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from engine.api import Prompt, SamplingParams
from gateway.accounting import RequestContext
from gateway.admission import Admission
from gateway.api.common import RagOptions, Usage, make_usage, new_id, now
from gateway.caching import Caches
from gateway.engines.pool import RETRYABLE, EnginePool, RoutedStream, engine_error
from gateway.errors import from_engine_error
from gateway.metrics import GatewayMetrics


@dataclass
class GenerationRequest:
    """One prompt to generate for, as an endpoint's handler prepared it."""

    route: str
    """"chat" or "completions": the caches' scope and the metrics' label."""
    model: str
    prompt: Prompt
    params: SamplingParams
    id_prefix: str
    """Of the response's id: "chatcmpl" or "cmpl"."""
    affinity_key: str | None = None
    """What prefix-affinity routing hashes (the conversation's start)."""
    cache_body: dict[str, Any] | None = None
    """The request as the response cache keys it; None: never cached."""
    semantic_messages: list[dict[str, str]] | None = None
    """The conversation the semantic cache compares (chat only)."""
    rag: RagOptions | None = None
    requested_max_tokens: int | None = None
    """max_tokens as the client gave it (rate-limit estimate, retrieval's reserve)."""

    @property
    def estimated_tokens(self) -> int:
        """Tokens the rate limiter reserves before the generation runs."""
        return (self.requested_max_tokens or 16) * self.params.n


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


Retriever = Callable[
    [RequestContext, GenerationRequest], Awaitable[tuple[Prompt, list[dict[str, Any]]]]
]
"""Adds retrieved context to a chat prompt: (new prompt, citations)."""


@dataclass
class Pipeline:
    """The small parts a generation passes through, each owning one concern."""

    pool: EnginePool
    admission: Admission
    caches: Caches
    metrics: GatewayMetrics
    retriever: Retriever | None = None
    request_timeout: float | None = None


class Run:
    """One generation in progress (or a cache hit replayed): events, then a result."""

    def __init__(
        self,
        ctx: RequestContext,
        request: GenerationRequest,
        parts: Pipeline,
        stream: RoutedStream | None,
        cached: GenerationResult | None,
        release: Callable[[], None],
        citations: list[dict[str, Any]] | None = None,
    ) -> None:
        self.ctx, self.request, self.parts = ctx, request, parts
        self.id = new_id(request.id_prefix)
        self._stream, self._cached, self._release = stream, cached, release
        self.citations = citations if cached is None else cached.citations
        self.choices = [ChoiceResult(i) for i in range(request.params.n)]
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
                await self.parts.admission.charge(self.ctx.principal, self.usage.total_tokens)
        complete = self._done and all(c.finish_reason in ("stop", "length") for c in self.choices)
        if complete and self._cached is None:
            await self.parts.caches.put(self.ctx, self.request, _result_to_cache(self.result()))
        replayed = self.ctx.cache_status in ("hit", "semantic-hit")
        usage = self.usage if self._done and not replayed else None
        self.parts.metrics.observe_generation(self.request.route, self.ctx.stages, usage, self.ttft)


class Generation:
    """Starts runs: the shared core of the chat and completions handlers."""

    def __init__(self, parts: Pipeline) -> None:
        self.parts = parts

    @property
    def retrieval_enabled(self) -> bool:
        return self.parts.retriever is not None

    def context_length(self, model: str) -> int:
        """The model's context length (404 when no engine serves it, 503 when none is up)."""
        return self.parts.pool.require_model(model)

    async def start(self, ctx: RequestContext, request: GenerationRequest) -> Run:
        """Admit, look up the caches, retrieve, and start the engine stream."""
        parts = self.parts
        release = await parts.admission.admit(ctx.principal, request.estimated_tokens)
        try:
            ctx.stages["gateway_queue"] = time.perf_counter() - ctx.arrival
            t0 = time.perf_counter()
            cached = await parts.caches.get(ctx, request)
            ctx.stages["cache_lookup"] = time.perf_counter() - t0
            if cached is not None:
                return Run(ctx, request, parts, None, _result_from_cache(cached), release)
            citations = None
            if request.rag is not None and parts.retriever is not None:
                t1 = time.perf_counter()
                request.prompt, citations = await parts.retriever(ctx, request)
                ctx.stages["retrieval"] = time.perf_counter() - t1
            stream = await parts.pool.generate(
                request.model,
                request.prompt,
                request.params,
                request.affinity_key,
                parts.request_timeout,
                ctx.request_id,
            )
        except BaseException as e:
            release()
            mapped = from_engine_error(e) if isinstance(e, Exception) else None
            if mapped is not None:
                raise mapped from e
            raise
        return Run(ctx, request, parts, stream, None, release, citations)
