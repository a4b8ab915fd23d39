"""A gRPC server interceptor that turns every error a handler raises into a status code, and
a message that does not parse into INVALID_ARGUMENT: no traceback leaves a server.

Each server says how its errors map (``StatusFor``); the engine pod and the gateway's public
front both use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

RETRY_AFTER_KEY = "retry-after-ms"
"""Trailing metadata of RESOURCE_EXHAUSTED and UNAVAILABLE: how long to wait, in ms."""

StatusFor = Callable[[Exception], tuple[grpc.StatusCode, str, bool]]
"""(status code, client-safe message, retryable) for an error a handler raised."""


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
        self,
        status_for: StatusFor,
        retry_after: float,
        on_error: Callable[[str, grpc.StatusCode], None] | None = None,
    ) -> None:
        self._status_for = status_for
        self._retry_ms = str(int(retry_after * 1000))
        self._on_error = on_error

    async def _abort(self, context: grpc.aio.ServicerContext, method: str, e: Exception) -> None:
        code, message, retryable = self._status_for(e)
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
