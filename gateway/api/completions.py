"""POST /v1/completions: schemas and the handler shared by REST and gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway.accounting import RequestContext
from gateway.api.common import SamplingFields, Usage, make_usage, new_id, now
from gateway.api.generation import ChoiceEvent, Generation, GenerationRequest, Run, TokenLogprobs
from gateway.api.http import gateway_of, opens, respond
from gateway.engines.routing import affinity_key
from gateway.errors import bad_request, unsupported

router = APIRouter()

UNSUPPORTED_COMPLETION_FIELDS = {
    "suffix": "suffix (insertion)",
}

PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    """OpenAI's legacy completion request plus vLLM's sampling extras."""

    prompt: PromptInput = Field(..., description="text, texts, token ids, or lists of token ids")
    echo: bool = Field(False, description="prepend the prompt to each completion")
    logprobs: int | None = Field(None, ge=0, le=5, description="top alternatives per token")
    best_of: int | None = Field(None, ge=1, description="only best_of == n is supported")
    max_tokens: int | None = Field(16, ge=1, description="cap on generated tokens (default 16)")

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise bad_request("the prompt is empty", "prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length", "abort"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None
    system_fingerprint: str | None = None


def _logprobs(items: list[TokenLogprobs], offset: int) -> CompletionLogprobs:
    offsets, pos = [], offset
    for i in items:
        offsets.append(pos)
        pos += len(i.token)
    return CompletionLogprobs(
        tokens=[i.token for i in items],
        token_logprobs=[i.logprob for i in items],
        top_logprobs=[dict(i.top) for i in items],
        text_offset=offsets,
    )


class CompletionHandler:
    """Turns a CompletionRequest into engine generations and OpenAI's response shapes."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation

    def prepare(self, req: CompletionRequest) -> list[GenerationRequest]:
        """What the pipeline generates: one generation per prompt."""
        if req.best_of is not None and req.best_of != req.n:
            raise unsupported("best_of", "best_of different from n")
        prompts = req.prompts()
        if req.echo and (req.logprobs is not None or not all(isinstance(p, str) for p in prompts)):
            raise unsupported("echo", "echo with logprobs or with token-id prompts")
        params = req.sampling_params(self.generation.context_length(req.model), req.logprobs)
        return [
            GenerationRequest(
                route="completions",
                model=req.model,
                prompt=p,
                params=params,
                id_prefix="cmpl",
                affinity_key=affinity_key(None, p) if isinstance(p, str) else None,
                cache_body=req.cache_body(prompt=p),
                requested_max_tokens=req.max_tokens,
            )
            for p in prompts
        ]

    async def create(
        self, req: CompletionRequest, ctx: RequestContext
    ) -> Completion | AsyncIterator[Completion]:
        prompts = req.prompts()
        runs: list[Run] = []
        try:
            for one in self.prepare(req):
                runs.append(await self.generation.start(ctx, one))
        except BaseException:
            for r in runs:
                await r.aclose()
            raise
        echoes = [p if req.echo and isinstance(p, str) else "" for p in prompts]
        if req.stream:
            return self._stream(req, runs, echoes)
        results = await asyncio.gather(*(r.collect() for r in runs))
        choices = []
        for pi, (res, echo) in enumerate(zip(results, echoes, strict=True)):
            for c in res.choices:
                choices.append(
                    CompletionChoice(
                        index=pi * req.n + c.index,
                        text=echo + c.text,
                        logprobs=_logprobs(c.logprobs, len(echo))
                        if req.logprobs is not None
                        else None,
                        finish_reason=c.finish_reason,
                    )
                )
        usage = make_usage(
            sum(r.usage.prompt_tokens for r in results),
            sum(r.usage.completion_tokens for r in results),
            sum(
                (
                    r.usage.prompt_tokens_details.cached_tokens
                    if r.usage.prompt_tokens_details
                    else 0
                )
                for r in results
            ),
        )
        return Completion(
            id=new_id("cmpl"), created=now(), model=req.model, choices=choices, usage=usage
        )

    async def _stream(
        self, req: CompletionRequest, runs: list[Run], echoes: list[str]
    ) -> AsyncIterator[Completion]:
        cid, created = new_id("cmpl"), now()
        queue: asyncio.Queue[tuple[int, ChoiceEvent] | BaseException | None] = asyncio.Queue()

        async def pump(pi: int, run: Run) -> None:
            try:
                async for event in run.events():
                    await queue.put((pi, event))
            except BaseException as e:
                await queue.put(e)
                raise
            finally:
                await queue.put(None)

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
            if usage is None and req.continuous_usage:
                usage = make_usage(
                    sum(r.usage.prompt_tokens for r in runs),
                    sum(r.usage.completion_tokens for r in runs),
                    0,
                )
            return Completion(
                id=cid, created=created, model=req.model, choices=choices, usage=usage
            )

        tasks = [asyncio.create_task(pump(pi, r)) for pi, r in enumerate(runs)]
        offsets = {(pi, i): len(echoes[pi]) for pi in range(len(runs)) for i in range(req.n)}
        try:
            for pi, echo in enumerate(echoes):
                if echo:
                    yield chunk(
                        [
                            CompletionChoice(
                                index=pi * req.n + i, text=echo, logprobs=None, finish_reason=None
                            )
                            for i in range(req.n)
                        ]
                    )
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                pi, e = item
                lp = None
                if req.logprobs is not None:
                    lp = _logprobs(e.logprobs, offsets[(pi, e.index)])
                    offsets[(pi, e.index)] += len(e.text)
                yield chunk(
                    [
                        CompletionChoice(
                            index=pi * req.n + e.index,
                            text=e.text,
                            logprobs=lp,
                            finish_reason=e.finish_reason,
                        )
                    ]
                )
            if req.include_usage:
                yield chunk(
                    [],
                    make_usage(
                        sum(r.usage.prompt_tokens for r in runs),
                        sum(r.usage.completion_tokens for r in runs),
                        0,
                    ),
                )
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    ctx: RequestContext = Depends(opens("completions")),  # noqa: B008 (FastAPI's idiom)
) -> Response:
    """Text completion for one or more prompts (text or token ids)."""
    work = gateway_of(request).completions.create(body, ctx)
    return await respond(request, ctx, work, stream=body.stream)
