"""One interceptor maps every error a handler raises to a gRPC status; no traceback leaves."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import jinja2

from engine.async_engine import EngineDeadError
from engine.errors import InvalidRequestError, QueueFullError
from engine.model_source import ModelSourceError
from engine.sampling_params import SamplingParamsError

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after-ms"
"""Trailing metadata of RESOURCE_EXHAUSTED and UNAVAILABLE: how long to wait, in ms."""


class EngineUnavailableError(Exception):
    """The pod is not accepting work now (loading, warming up or draining)."""


_INVALID = (InvalidRequestError, SamplingParamsError, ModelSourceError, jinja2.TemplateError)


def status_for(error: Exception) -> tuple[grpc.StatusCode, str, bool]:
    """(status code, client-safe message, retryable) for an error raised by a handler."""
    if isinstance(error, _INVALID):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error), False
    if isinstance(error, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), True
    if isinstance(error, EngineUnavailableError | EngineDeadError):
        return grpc.StatusCode.UNAVAILABLE, str(error), True
    incident = uuid.uuid4().hex[:12]
    log.error("internal error %s", incident, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal engine error (incident {incident})", False


class _Malformed:
    """Stands in for a request whose bytes did not parse (answered INVALID_ARGUMENT)."""


MALFORMED = _Malformed()


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data) if deserializer is not None else data
        except Exception:  # corrupt wire format: the handler answers INVALID_ARGUMENT
            return MALFORMED

    return parse


async def _reject_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
    if request is MALFORMED:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request message")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary and server-streaming handlers: exceptions become status codes."""

    def __init__(
        self, retry_after: float, on_error: Callable[[str, grpc.StatusCode], None] | None = None
    ) -> None:
        self._retry_ms = str(int(retry_after * 1000))
        self._on_error = on_error

    async def _abort(self, context: grpc.aio.ServicerContext, method: str, e: Exception) -> None:
        code, message, retryable = status_for(e)
        if self._on_error is not None:
            self._on_error(method, code)
        if retryable:
            context.set_trailing_metadata(((RETRY_AFTER_KEY, self._retry_ms),))
        await context.abort(code, message)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = str(details.method).rsplit("/", 1)[-1]
        if handler is None:
            return handler
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await _reject_malformed(request, context)
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as e:
                    await self._abort(context, method, e)

            return grpc.unary_stream_rpc_method_handler(
                stream, _safe(handler.request_deserializer), handler.response_serializer
            )
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await _reject_malformed(request, context)
                try:
                    return await inner_unary(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as e:
                    await self._abort(context, method, e)

            return grpc.unary_unary_rpc_method_handler(
                unary, _safe(handler.request_deserializer), handler.response_serializer
            )
        return handler
