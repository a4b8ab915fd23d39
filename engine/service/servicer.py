"""tessera.engine.v1.EngineService: Generate (server stream), Abort, Info."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

import tessera
from engine.async_engine import AsyncEngine
from engine.errors import InvalidRequestError
from engine.service import convert
from engine.service.client import REQUEST_ID_METADATA
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

    @property
    def max_waiting(self) -> int:
        """Bound of the waiting queue."""


def _prompt(request: Any, engine: AsyncEngine) -> str | list[int]:
    which = request.WhichOneof("prompt")
    if which == "text":
        return str(request.text)
    if which == "token_ids":
        return list(request.token_ids.ids)
    if which == "chat":
        messages = [{"role": m.role, "content": m.content} for m in request.chat.messages]
        if not messages:
            raise InvalidRequestError("the chat prompt has no messages")
        return engine.engine.tokenizer.apply_chat_template(
            messages, request.chat.add_generation_prompt
        )
    raise InvalidRequestError("the request has no prompt: set text, token_ids or chat")


class EngineServicer(pb_grpc.EngineServiceServicer):
    """Thin: converts messages, calls the AsyncEngine, streams its outputs back."""

    def __init__(self, host: EngineHost) -> None:
        self.host = host
        self._piece: Callable[[int], str] | None = None

    def _piece_fn(self, engine: AsyncEngine) -> Callable[[int], str]:
        if self._piece is None:
            tok = engine.engine.tokenizer

            @functools.lru_cache(maxsize=65536)
            def piece(token_id: int) -> str:
                return tok.decode([token_id], skip_special_tokens=False)

            self._piece = piece
        return self._piece

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        engine = self.host.accepting_engine()
        prompt = _prompt(request, engine)
        params = convert.sampling_from_pb(request.sampling)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        stream = await engine.add_request(
            prompt, params, request.request_id or None, request.priority, deadline
        )
        piece = self._piece_fn(engine)
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
                yield convert.output_to_pb(out, piece)
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

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        engine = self.host.engine
        if engine is None:
            return pb.InfoResponse(accepting=False, version=tessera.__version__)
        core = engine.engine
        cap, stats = core.capacity, engine.stats()
        return pb.InfoResponse(
            model=core.bundle.name,
            model_source=core.bundle.source,
            backend=cap.backend,
            quantization=core.capacity.quantization,
            device=cap.device,
            dtype=cap.dtype,
            max_model_len=cap.max_model_len,
            num_kv_blocks=cap.num_blocks,
            block_size=cap.block_size,
            max_num_seqs=cap.max_num_seqs,
            max_num_batched_tokens=cap.max_num_batched_tokens,
            max_waiting=self.host.max_waiting,
            load=pb.EngineLoad(
                num_running=stats.num_running,
                num_waiting=stats.num_waiting,
                kv_usage=stats.kv_usage,
                num_free_blocks=stats.num_free_blocks,
                waiting_capacity_left=max(0, self.host.max_waiting - stats.num_waiting),
            ),
            accepting=self.host.accepting,
            version=tessera.__version__,
        )


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
