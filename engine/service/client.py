"""One client interface to an engine, in-process or across gRPC, raising the same errors.

The gateway talks to engines only through ``EngineClient``: ``LocalEngineClient``
wraps an AsyncEngine (embedded mode), ``GrpcEngineClient`` a remote engine pod.
Both yield the engine's RequestOutput per step and raise InvalidRequestError,
QueueFullError or EngineUnavailableError when the engine refuses a request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from engine.async_engine import AsyncEngine, EngineDeadError, RequestStream
from engine.errors import InvalidRequestError, QueueFullError
from engine.model_source.tokenizer import Tokenizer
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.service import convert
from engine.service.errors import RETRY_AFTER_KEY, EngineUnavailableError
from tessera.engine.v1 import engine_pb2 as pb
from tessera.engine.v1 import engine_pb2_grpc as pb_grpc

REQUEST_ID_METADATA = "x-request-id"
"""gRPC metadata key of the caller's request id, logged by the engine with its own lines."""


def engine_request_id(correlation_id: str | None = None) -> str:
    """A request id unique among an engine's in-flight requests, led by the caller's id.

    The caller's id alone is not unique enough: a client may reuse its X-Request-Id, and
    a completion with several prompts sends one engine request per prompt.
    """
    if correlation_id:
        return f"{correlation_id}-{uuid.uuid4().hex[:12]}"
    return f"req-{uuid.uuid4().hex}"


@dataclass
class ChatPrompt:
    """Messages to render with the engine's own chat template."""

    messages: list[dict[str, str]]
    add_generation_prompt: bool = True


Prompt = str | Sequence[int] | ChatPrompt


@dataclass
class EngineInfo:
    """An engine's model, limits and load (the Info RPC's content)."""

    model: str
    backend: str
    quantization: str
    max_model_len: int
    accepting: bool
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    waiting_capacity_left: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class EngineCallError(Exception):
    """A remote engine failed the call in a way that is not the request's fault."""


class GenerationStream(Protocol):
    """An accepted request: its id, prompt tokens, and outputs step by step."""

    request_id: str
    prompt_token_ids: list[int]

    def __aiter__(self) -> AsyncIterator[RequestOutput]: ...

    async def aclose(self) -> None:
        """Stop reading; aborts the request unless it finished."""

    def token_text(self, token_id: int) -> str:
        """The text of one token seen in this stream's logprobs (for API responses)."""


class EngineClient(Protocol):
    """What the gateway needs from an engine."""

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> GenerationStream:
        """Start a request; returns once the engine accepted it (or raises).

        ``correlation_id`` is the caller's request id (the gateway's X-Request-Id): the
        engine logs it, and derives its own unique request id from it when none is given.
        """

    async def abort(self, request_id: str) -> bool:
        """Abort a request; True when it was in flight."""

    async def info(self) -> EngineInfo:
        """The engine's model, limits and load."""

    async def close(self) -> None:
        """Release connections (not the engine)."""


# ---- in-process --------------------------------------------------------------------------
class _LocalStream:
    def __init__(self, stream: RequestStream, tokenizer: Tokenizer) -> None:
        self._stream = stream
        self._tokenizer = tokenizer
        self.request_id = stream.request_id
        self.prompt_token_ids = stream.prompt_token_ids

    def token_text(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._stream

    async def aclose(self) -> None:
        self._stream.close()


class LocalEngineClient:
    """An AsyncEngine in this process, behind the EngineClient interface."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> GenerationStream:
        request_id = request_id or engine_request_id(correlation_id)
        if isinstance(prompt, ChatPrompt):
            tok = self.engine.engine.tokenizer
            text: str | Sequence[int] = tok.apply_chat_template(
                prompt.messages, prompt.add_generation_prompt
            )
        else:
            text = prompt
        deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            stream = await self.engine.add_request(text, params, request_id, priority, deadline)
        except EngineDeadError as e:
            raise EngineUnavailableError(str(e)) from e
        return _LocalStream(stream, self.engine.engine.tokenizer)

    async def abort(self, request_id: str) -> bool:
        return await self.engine.abort_request(request_id)

    async def info(self) -> EngineInfo:
        core, s = self.engine.engine, self.engine.stats()
        return EngineInfo(
            model=core.bundle.name,
            backend=core.capacity.backend,
            quantization=core.capacity.quantization,
            max_model_len=core.max_model_len,
            accepting=self.engine.is_running,
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            kv_usage=s.kv_usage,
            waiting_capacity_left=max(0, core.config.scheduler.max_waiting - s.num_waiting),
        )

    async def close(self) -> None:
        return None


# ---- over gRPC ---------------------------------------------------------------------------
def _raise_for(error: grpc.aio.AioRpcError) -> None:
    code, message = error.code(), error.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        raise InvalidRequestError(message) from error
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry = dict(error.trailing_metadata() or ()).get(RETRY_AFTER_KEY)
        raise QueueFullError(message, retry_after=float(retry) / 1000 if retry else None) from error
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        raise EngineUnavailableError(f"{code.name}: {message}") from error
    raise EngineCallError(f"{code.name}: {message}") from error


class _GrpcStream:
    def __init__(self, call: Any, first: Any) -> None:
        self._call = call
        self.request_id: str = first.request_id
        self.prompt_token_ids: list[int] = list(first.prompt_token_ids)
        self._done = False
        self._texts: dict[int, str] = {}

    def token_text(self, token_id: int) -> str:
        return self._texts.get(token_id, "")

    def __aiter__(self) -> _GrpcStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        try:
            msg = await self._call.read()
        except grpc.aio.AioRpcError as e:
            self._done = True
            _raise_for(e)
        if msg is grpc.aio.EOF:
            self._done = True
            raise EngineCallError("the engine ended the stream before finishing")
        for d in msg.deltas:
            for lp in d.logprobs:
                self._texts[lp.token_id] = lp.token
                self._texts.update((t.token_id, t.token) for t in lp.top)
        out = convert.output_from_pb(msg)
        self._done = out.finished
        return out

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._call.cancel()  # the engine aborts the request within a step


def _request(
    prompt: Prompt, params: SamplingParams, request_id: str, priority: int
) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        request_id=request_id,
        sampling=convert.sampling_to_pb(params),
        priority=priority,
        return_prompt_token_ids=True,
    )
    if isinstance(prompt, ChatPrompt):
        messages = [pb.ChatMessage(role=m["role"], content=m["content"]) for m in prompt.messages]
        req.chat.CopyFrom(
            pb.ChatPrompt(messages=messages, add_generation_prompt=prompt.add_generation_prompt)
        )
    elif isinstance(prompt, str):
        req.text = prompt
    else:
        req.token_ids.ids.extend(int(t) for t in prompt)
    return req


class GrpcEngineClient:
    """A remote engine pod at ``target`` (host:port)."""

    def __init__(
        self, target: str, options: Sequence[tuple[str, Any]] = (), tls_ca: bytes | None = None
    ) -> None:
        self.target = target
        if tls_ca is not None:  # verify the engine's certificate against this CA
            creds = grpc.ssl_channel_credentials(root_certificates=tls_ca)
            self.channel = grpc.aio.secure_channel(target, creds, options=list(options))
        else:
            self.channel = grpc.aio.insecure_channel(target, options=list(options))
        self.stub = pb_grpc.EngineServiceStub(self.channel)

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> GenerationStream:
        rid = request_id or engine_request_id(correlation_id)
        metadata = ((REQUEST_ID_METADATA, correlation_id),) if correlation_id else None
        call = self.stub.Generate(
            _request(prompt, params, rid, priority), timeout=timeout, metadata=metadata
        )
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as e:
            _raise_for(e)
        except BaseException:
            call.cancel()
            raise
        if first is grpc.aio.EOF:
            raise EngineCallError("the engine closed the stream without accepting the request")
        return _GrpcStream(call, first)

    async def abort(self, request_id: str) -> bool:
        try:
            reply = await self.stub.Abort(pb.AbortRequest(request_id=request_id), timeout=5)
        except grpc.aio.AioRpcError as e:
            _raise_for(e)
        return bool(reply.aborted)

    async def info(self, timeout: float = 5.0) -> EngineInfo:
        try:
            r = await self.stub.Info(pb.InfoRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            _raise_for(e)
        return EngineInfo(
            model=r.model,
            backend=r.backend,
            quantization=r.quantization,
            max_model_len=r.max_model_len,
            accepting=r.accepting,
            num_running=r.load.num_running,
            num_waiting=r.load.num_waiting,
            kv_usage=r.load.kv_usage,
            waiting_capacity_left=r.load.waiting_capacity_left,
            extra={"num_kv_blocks": r.num_kv_blocks, "block_size": r.block_size},
        )

    async def close(self) -> None:
        await self.channel.close()
