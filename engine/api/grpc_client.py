"""The EngineClient of a remote engine pod: a thin transport adapter over gRPC.

It speaks only the generated stubs and the contract types, so the gateway that uses it
loads no engine implementation (like TGI's router, which knows only the proto).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import grpc

from engine.api import wire
from engine.api.client import (
    REQUEST_ID_METADATA,
    ChatPrompt,
    EngineInfo,
    GenerationStream,
    Prompt,
    engine_request_id,
)
from engine.api.errors import (
    EngineCallError,
    EngineUnavailableError,
    InvalidRequestError,
    QueueFullError,
)
from engine.api.outputs import RequestOutput
from engine.api.params import SamplingParams
from tessera.engine.v1 import engine_pb2 as pb
from tessera.engine.v1 import engine_pb2_grpc as pb_grpc
from tessera.grpc_errors import RETRY_AFTER_KEY


def raise_for(error: grpc.aio.AioRpcError) -> NoReturn:
    """The contract's error for a failed engine call."""
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
            raise_for(e)
        if msg is grpc.aio.EOF:
            self._done = True
            raise EngineCallError("the engine ended the stream before finishing")
        for d in msg.deltas:
            for lp in d.logprobs:
                self._texts[lp.token_id] = lp.token
                self._texts.update((t.token_id, t.token) for t in lp.top)
        out = wire.output_from_pb(msg)
        self._done = out.finished
        return out

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._call.cancel()  # the engine aborts the request within a step


def _chat(prompt: ChatPrompt) -> pb.ChatPrompt:
    messages = [pb.ChatMessage(role=m["role"], content=m["content"]) for m in prompt.messages]
    return pb.ChatPrompt(messages=messages, add_generation_prompt=prompt.add_generation_prompt)


def _request(
    prompt: Prompt, params: SamplingParams, request_id: str, priority: int
) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        request_id=request_id,
        sampling=wire.sampling_to_pb(params),
        priority=priority,
        return_prompt_token_ids=True,
    )
    if isinstance(prompt, ChatPrompt):
        req.chat.CopyFrom(_chat(prompt))
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
            raise_for(e)
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
            raise_for(e)
        return bool(reply.aborted)

    async def info(self, timeout: float = 5.0) -> EngineInfo:
        try:
            reply = await self.stub.Info(pb.InfoRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise_for(e)
        return wire.info_from_pb(reply)

    async def tokenize(
        self, prompt: str | ChatPrompt, add_special_tokens: bool = True
    ) -> list[int]:
        req = pb.TokenizeRequest(add_special_tokens=add_special_tokens)
        if isinstance(prompt, ChatPrompt):
            req.chat.CopyFrom(_chat(prompt))
        else:
            req.text = prompt
        try:
            reply = await self.stub.Tokenize(req, timeout=30)
        except grpc.aio.AioRpcError as e:
            raise_for(e)
        return list(reply.tokens)

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        try:
            reply = await self.stub.Detokenize(pb.DetokenizeRequest(tokens=token_ids), timeout=30)
        except grpc.aio.AioRpcError as e:
            raise_for(e)
        return str(reply.text)

    async def close(self) -> None:
        await self.channel.close()
