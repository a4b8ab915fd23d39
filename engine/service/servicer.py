"""tessera.engine.v1.EngineService: Generate (server stream), Abort, Info."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

import tessera
from engine.api import REQUEST_ID_METADATA, ChatPrompt, InvalidRequestError, Prompt, wire
from engine.async_engine import AsyncEngine
from tessera.engine.v1 import engine_pb2 as pb
from tessera.engine.v1 import engine_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class EngineHost(Protocol):
    """What the servicer needs from the pod around it."""

    def accepting_engine(self) -> AsyncEngine:
        """The engine, or EngineUnavailableError while loading or draining."""

    @property
    def engine(self) -> AsyncEngine | None:
        """The engine once loaded (also while draining)."""

    def track(self, request_id: str) -> None:
        """A stream started (drain waits for it)."""

    def untrack(self, request_id: str) -> None:
        """A stream ended."""

    @property
    def accepting(self) -> bool:
        """Whether new work is taken now."""


def _prompt(request: Any) -> Prompt:
    which = request.WhichOneof("prompt")
    if which == "text":
        return str(request.text)
    if which == "token_ids":
        return list(request.token_ids.ids)
    if which == "chat":
        messages = [{"role": m.role, "content": m.content} for m in request.chat.messages]
        return ChatPrompt(messages, request.chat.add_generation_prompt)
    raise InvalidRequestError("the request has no prompt: set text, token_ids or chat")


class EngineServicer(pb_grpc.EngineServiceServicer):
    """Thin: converts messages, calls the AsyncEngine, streams its outputs back."""

    def __init__(self, host: EngineHost) -> None:
        self.host = host

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        engine = self.host.accepting_engine()
        prompt = _prompt(request)
        params = wire.sampling_from_pb(request.sampling)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        stream = await engine.add_request(
            prompt, params, request.request_id or None, request.priority, deadline
        )
        self.host.track(stream.request_id)
        t0, outcome, last = time.perf_counter(), "cancelled", None
        try:
            yield pb.GenerateResponse(
                request_id=stream.request_id,
                usage=pb.Usage(prompt_tokens=len(stream.prompt_token_ids)),
                prompt_token_ids=stream.prompt_token_ids if request.return_prompt_token_ids else [],
            )
            async for out in stream:
                last = out
                yield wire.output_to_pb(out, engine.token_text)
            outcome = "finished"
        except Exception:
            outcome = "failed"
            raise
        finally:
            stream.close()  # client gone or cancelled: abort within one step
            self.host.untrack(stream.request_id)
            _log_generate(context, stream.request_id, outcome, last, time.perf_counter() - t0)

    async def Abort(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        engine = self.host.engine
        aborted = engine is not None and await engine.abort_request(request.request_id)
        return pb.AbortResponse(aborted=aborted)

    async def Tokenize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        engine = self.host.accepting_engine()
        which = request.WhichOneof("prompt")
        if which is None:
            raise InvalidRequestError("the request has no prompt: set text or chat")
        prompt = _prompt(request)
        assert isinstance(prompt, str | ChatPrompt)
        special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        tokens = engine.tokenize(prompt, special)
        return pb.TokenizeResponse(tokens=tokens, max_model_len=engine.info().max_model_len)

    async def Detokenize(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        engine = self.host.accepting_engine()
        return pb.DetokenizeResponse(text=engine.detokenize(list(request.tokens)))

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        engine = self.host.engine
        if engine is None:
            return pb.InfoResponse(accepting=False, version=tessera.__version__)
        return wire.info_to_pb(engine.info(accepting=self.host.accepting))


def _log_generate(
    context: grpc.aio.ServicerContext, rid: str, outcome: str, last: Any, seconds: float
) -> None:
    """One line per Generate stream, under the caller's request id (gRPC metadata)."""
    metadata = dict(context.invocation_metadata() or ())
    log.info(
        "generate %s",
        outcome,
        extra={
            "request_id": metadata.get(REQUEST_ID_METADATA) or rid,
            "engine_request_id": rid,
            "prompt_tokens": last.num_prompt_tokens if last else None,
            "completion_tokens": last.num_output_tokens if last else 0,
            "duration_ms": round(seconds * 1000, 1),
        },
    )
