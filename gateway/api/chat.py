"""POST /v1/chat/completions: schemas and the handler shared by REST and gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, model_validator

from engine.api import ChatPrompt
from gateway.accounting import RequestContext
from gateway.api.common import (
    RagOptions,
    ResponseFormat,
    SamplingFields,
    StrictModel,
    Usage,
    now,
)
from gateway.api.generation import (
    Generation,
    GenerationRequest,
    GenerationResult,
    Run,
    TokenLogprobs,
)
from gateway.api.http import gateway_of, opens, respond
from gateway.api.tools import (
    FunctionCallDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolPlan,
    render_call,
)
from gateway.engines.routing import affinity_key
from gateway.errors import bad_request, unsupported

router = APIRouter()

UNSUPPORTED_CHAT_FIELDS = {
    "functions": "the deprecated functions (use tools)",
    "function_call": "the deprecated function_call (use tool_choice)",
    "audio": "audio output",
    "modalities": "modalities other than text",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning_effort",
    "service_tier": "service_tier",
    "store": "stored completions (store)",
    "metadata": "metadata",
}


class ContentPart(StrictModel):
    type: Literal["text"] = Field(..., description="only text parts are supported")
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant's earlier calls")
    tool_call_id: str | None = Field(None, description="the call a tool message answers")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingFields):
    """OpenAI's chat completion request (text only) plus vLLM's sampling extras."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="alias of max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    rag: RagOptions | None = Field(None, description="retrieve context from a RAG collection")
    response_format: ResponseFormat | None = Field(
        None, description="text, json_object, or json_schema (enforced token by token)"
    )
    tools: list[Tool] | None = Field(None, description="functions the model may call")
    tool_choice: ToolChoice | None = Field(
        None, description="none, auto (default with tools), required, or a named function"
    )
    parallel_tool_calls: bool | None = Field(None, description="allow several calls [true]")

    @model_validator(mode="after")
    def _merge_limits(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def tool_plan(self) -> ToolPlan | None:
        return ToolPlan.of(self.tools, self.tool_choice, self.parallel_tool_calls)

    def engine_messages(self, plan: ToolPlan | None = None) -> list[dict[str, str]]:
        """The conversation as the chat template takes it: earlier calls and tool results in
        the model's call format, and the tools in the system prompt when ``plan`` is given."""
        out, calls = [], set()
        for m in self.messages:
            text = m.text()
            if m.tool_calls:
                calls |= {c.id for c in m.tool_calls}
                text = "\n".join([text, *(render_call(c) for c in m.tool_calls)]).strip()
            if m.role == "tool":
                if m.tool_call_id not in calls:
                    raise bad_request(
                        f"the tool message answers tool_call_id {m.tool_call_id!r}, which no "
                        "earlier assistant message called",
                        "messages",
                    )
                text = f"<tool_response>\n{text}\n</tool_response>"
            # "developer" is OpenAI's newer name for the system role
            out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
        if plan is not None:
            if out[0]["role"] == "system":
                out[0] = {
                    "role": "system",
                    "content": out[0]["content"] + "\n\n" + plan.system_text(),
                }
            else:
                out.insert(0, {"role": "system", "content": plan.system_text()})
        return out


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class Citation(BaseModel):
    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any] = Field(default_factory=dict)


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length", "abort", "tool_calls"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    citations: list[Citation] | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort", "tool_calls"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    citations: list[Citation] | None = None


def _logprobs(items: list[TokenLogprobs]) -> ChoiceLogprobs:
    def top(t: str, lp: float) -> TopLogprob:
        return TopLogprob(token=t, logprob=lp, bytes=list(t.encode("utf-8")))

    return ChoiceLogprobs(
        content=[
            ChatTokenLogprob(
                token=i.token,
                logprob=i.logprob,
                bytes=list(i.token.encode("utf-8")),
                top_logprobs=[top(t, lp) for t, lp in i.top],
            )
            for i in items
        ]
    )


class ChatHandler:
    """Turns a ChatCompletionRequest into an engine generation and OpenAI's response shapes."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation

    def prepare(self, req: ChatCompletionRequest, plan: ToolPlan | None) -> GenerationRequest:
        """What the pipeline generates for this request."""
        if req.rag is not None and not self.generation.retrieval_enabled:
            raise unsupported("rag", "retrieval (no RAG service is configured)")
        messages = req.engine_messages(plan)
        if req.messages[-1].role == "assistant":
            raise bad_request("the last message must not be from the assistant", "messages")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        max_len = self.generation.context_length(req.model)
        params = req.sampling_params(max_len, logprobs, req.response_format)
        if plan is not None:
            if params.structured_outputs is not None:
                raise bad_request(
                    "tools cannot be combined with response_format or structured_outputs",
                    "tools",
                )
            params.structured_outputs = plan.constraint()
            params.validate()
        return GenerationRequest(
            route="chat",
            model=req.model,
            prompt=ChatPrompt(messages),
            params=params,
            id_prefix="chatcmpl",
            affinity_key=affinity_key(messages, None),
            cache_body=req.cache_body(),
            semantic_messages=messages,
            rag=req.rag,
            requested_max_tokens=req.max_tokens,
        )

    async def create(
        self, req: ChatCompletionRequest, ctx: RequestContext
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        plan = req.tool_plan()
        run = await self.generation.start(ctx, self.prepare(req, plan))
        if req.stream:
            return self._stream(req, run, plan)
        result = await run.collect()
        return self.completion(req, result, plan)

    def completion(
        self, req: ChatCompletionRequest, result: GenerationResult, plan: ToolPlan | None
    ) -> ChatCompletion:
        choices = []
        for c in result.choices:
            content, calls = plan.parse(c.text) if plan is not None else (c.text, [])
            reason = "tool_calls" if calls and c.finish_reason == "stop" else c.finish_reason
            choices.append(
                ChatChoice(
                    index=c.index,
                    message=AssistantMessage(content=content, tool_calls=calls or None),
                    logprobs=_logprobs(c.logprobs) if req.logprobs else None,
                    finish_reason=reason,
                )
            )
        return ChatCompletion(
            id=result.id,
            created=result.created,
            model=req.model,
            choices=choices,
            usage=result.usage,
            citations=_citations(result),
        )

    async def _stream(
        self, req: ChatCompletionRequest, run: Run, plan: ToolPlan | None
    ) -> AsyncIterator[ChatCompletionChunk]:
        rid, created = run.id, now()

        def chunk(
            choices: list[ChatChunkChoice], usage: Usage | None = None
        ) -> ChatCompletionChunk:
            if usage is None and req.continuous_usage:
                usage = run.usage.model_copy()
            return ChatCompletionChunk(
                id=rid, created=created, model=req.model, choices=choices, usage=usage
            )

        first = chunk(
            [
                ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
                for i in range(req.n)
            ]
        )
        first.citations = _citations(run)
        yield first
        if plan is not None:
            async for c in _tool_stream(run, plan, req.n):
                yield chunk([c])
            if req.include_usage:
                yield chunk([], run.usage)
            return
        async for event in run.events():
            if event.text or event.logprobs:
                yield chunk(
                    [
                        ChatChunkChoice(
                            index=event.index,
                            delta=ChatDelta(content=event.text),
                            logprobs=_logprobs(event.logprobs) if req.logprobs else None,
                        )
                    ]
                )
            if event.finish_reason is not None:
                yield chunk(
                    [
                        ChatChunkChoice(
                            index=event.index, delta=ChatDelta(), finish_reason=event.finish_reason
                        )
                    ]
                )
        if req.include_usage:
            yield chunk([], run.usage)


async def _tool_stream(run: Run, plan: ToolPlan, n: int) -> AsyncIterator[ChatChunkChoice]:
    """A stream with tools, as OpenAI sends one: text as content deltas until a call opens
    (held back while it might be opening), then per call its index, id, type and name once
    and its arguments, and finish_reason "tool_calls"."""
    texts, sent = [""] * n, [0] * n
    async for event in run.events():
        i = event.index
        texts[i] += event.text
        hold = plan.holds_back(texts[i])
        if hold >= 0:
            upto = len(texts[i]) - hold
            if upto > sent[i]:
                yield ChatChunkChoice(index=i, delta=ChatDelta(content=texts[i][sent[i] : upto]))
                sent[i] = upto
        if event.finish_reason is None:
            continue
        _, calls = plan.parse(texts[i])
        if not calls and len(texts[i]) > sent[i]:  # not a call after all: the rest is text
            yield ChatChunkChoice(index=i, delta=ChatDelta(content=texts[i][sent[i] :]))
        for k, call in enumerate(calls):
            head = FunctionCallDelta(name=call.function.name, arguments="")
            yield ChatChunkChoice(
                index=i,
                delta=ChatDelta(
                    tool_calls=[ToolCallDelta(index=k, id=call.id, type="function", function=head)]
                ),
            )
            body = FunctionCallDelta(arguments=call.function.arguments)
            yield ChatChunkChoice(
                index=i, delta=ChatDelta(tool_calls=[ToolCallDelta(index=k, function=body)])
            )
        reason = "tool_calls" if calls and event.finish_reason == "stop" else event.finish_reason
        yield ChatChunkChoice(index=i, delta=ChatDelta(), finish_reason=reason)


def _citations(result: Any) -> list[Citation] | None:
    chunks = getattr(result, "citations", None)
    if chunks is None:
        return None
    return [Citation(**c) for c in chunks]


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    ctx: RequestContext = Depends(opens("chat")),  # noqa: B008 (FastAPI's dependency idiom)
) -> Response:
    """Chat completion; `stream: true` answers with server-sent events ending in [DONE]."""
    work = gateway_of(request).chat.create(body, ctx)
    return await respond(request, ctx, work, stream=body.stream)
