"""The public gRPC front (tessera.v1.Tessera): the same handlers as REST, other wire format.

Requests become the REST request models (so validation is identical), responses
are the REST response models turned into protos, and APIErrors become status
codes with OpenAI's error fields in the trailing metadata.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection
from pydantic import BaseModel, ValidationError

from engine.service.errors import ErrorInterceptor
from gateway.api.chat import ChatCompletionRequest
from gateway.api.completions import CompletionRequest
from gateway.api.generation import RequestContext, request_id_from
from gateway.api.models import list_models
from gateway.core import Gateway
from gateway.errors import APIError, bad_request
from gateway.rag import EmbeddingRequest, create_embeddings
from tessera.http_server import grpc_server_credentials
from tessera.v1 import (
    chat_pb2,
    completions_pb2,
    embeddings_pb2,
    models_pb2,
    service_pb2,
    service_pb2_grpc,
)

log = logging.getLogger(__name__)

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _request_dict(msg: Any, stream: bool) -> dict[str, Any]:
    body = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    body.update(body.pop("sampling", {}))
    if "text" in body:
        body["prompt"] = body.pop("text")
    elif "token_ids" in body:
        body["prompt"] = [int(t) for t in body.pop("token_ids").get("ids", [])]
    body["stream"] = stream
    return body


def _validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "request"
        raise bad_request(f"{where}: {first['msg']}", param=where) from e


def _to_proto(model: BaseModel, message: Any) -> Any:
    data = _strip_none(model.model_dump(mode="json"))
    for choice in data.get("choices", []):
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("top_logprobs"), list):
            lp["top_logprobs"] = [{"logprobs": d or {}} for d in lp["top_logprobs"]]
    return json_format.ParseDict(data, message, ignore_unknown_fields=True)


class TesseraServicer(service_pb2_grpc.TesseraServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def _context(self, context: grpc.aio.ServicerContext) -> RequestContext:
        md = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        principal = self.gw.authenticate(md.get("authorization"), md.get("api-key"))
        bypass = md.get("x-tessera-cache", "").lower() == "bypass"
        return RequestContext(
            principal, request_id_from(md.get("x-request-id")), bypass_cache=bypass
        )

    @staticmethod
    def _access_log(route: str, ctx: RequestContext | None, status: int, t0: float) -> None:
        log.info(
            "grpc_%s %d",
            route,
            status,
            extra={
                "request_id": ctx.request_id if ctx else None,
                "route": f"grpc_{route}",
                "status": status,
                "duration_ms": round((time.perf_counter() - t0) * 1000, 1),
            },
        )

    async def _fail(self, context: grpc.aio.ServicerContext, route: str, e: Exception) -> None:
        if not isinstance(e, APIError):
            incident = secrets.token_hex(6)
            log.error("internal error %s on gRPC %s", incident, route, exc_info=e)
            e = APIError(500, f"internal error (incident {incident})", "server_error")
        self.gw.metrics.requests.labels(f"grpc_{route}", str(e.status)).inc()
        md = [("error-type", e.type)]
        md += [("error-code", e.code)] if e.code else []
        md += [("error-param", e.param)] if e.param else []
        if e.retry_after is not None:
            md.append(("retry-after-ms", str(int(e.retry_after * 1000))))
        context.set_trailing_metadata(tuple(md))
        await context.abort(_STATUS.get(e.status, grpc.StatusCode.INTERNAL), e.message)

    async def _unary(
        self,
        route: str,
        handler: Any,
        model: type[BaseModel],
        msg: Any,
        context: grpc.aio.ServicerContext,
        out: Any,
    ) -> Any:
        t0 = time.perf_counter()
        ctx: RequestContext | None = None
        try:
            ctx = self._context(context)
            req = _validate(model, _request_dict(msg, stream=False))
            result = await handler.create(req, ctx)
        except Exception as e:
            self._access_log(route, ctx, e.status if isinstance(e, APIError) else 500, t0)
            await self._fail(context, route, e)
            raise
        self.gw.metrics.requests.labels(f"grpc_{route}", "200").inc()
        self._access_log(route, ctx, 200, t0)
        if ctx.cache_status:
            await context.send_initial_metadata((("x-tessera-cache", ctx.cache_status),))
        return _to_proto(result, out())

    async def _stream(
        self,
        route: str,
        handler: Any,
        model: type[BaseModel],
        msg: Any,
        context: grpc.aio.ServicerContext,
        out: Any,
    ) -> AsyncIterator[Any]:
        t0 = time.perf_counter()
        ctx: RequestContext | None = None
        try:
            ctx = self._context(context)
            req = _validate(model, _request_dict(msg, stream=True))
            chunks = await handler.create(req, ctx)
            async for chunk in chunks:
                yield _to_proto(chunk, out())
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            self._access_log(route, ctx, e.status if isinstance(e, APIError) else 500, t0)
            await self._fail(context, route, e)
        self.gw.metrics.requests.labels(f"grpc_{route}", "200").inc()
        self._access_log(route, ctx, 200, t0)

    async def CreateChatCompletion(self, request: Any, context: Any) -> Any:
        return await self._unary(
            "chat", self.gw.chat, ChatCompletionRequest, request, context, chat_pb2.ChatCompletion
        )

    async def StreamChatCompletion(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for m in self._stream(
            "chat",
            self.gw.chat,
            ChatCompletionRequest,
            request,
            context,
            chat_pb2.ChatCompletionChunk,
        ):
            yield m

    async def CreateCompletion(self, request: Any, context: Any) -> Any:
        return await self._unary(
            "completions",
            self.gw.completions,
            CompletionRequest,
            request,
            context,
            completions_pb2.Completion,
        )

    async def StreamCompletion(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for m in self._stream(
            "completions",
            self.gw.completions,
            CompletionRequest,
            request,
            context,
            completions_pb2.Completion,
        ):
            yield m

    async def CreateEmbeddings(self, request: Any, context: Any) -> Any:
        try:
            self._context(context)
            body = json_format.MessageToDict(request, preserving_proto_field_name=True)
            req = _validate(EmbeddingRequest, body)
            result = await create_embeddings(self.gw.rag, self.gw.embedding_model, req)
        except Exception as e:
            await self._fail(context, "embeddings", e)
            raise
        self.gw.metrics.requests.labels("grpc_embeddings", "200").inc()
        return _to_proto(result, embeddings_pb2.EmbeddingList())

    async def ListModels(self, request: Any, context: Any) -> Any:
        try:
            self._context(context)
        except Exception as e:
            await self._fail(context, "models", e)
        return _to_proto(list_models(self.gw.pool), models_pb2.ModelList())


async def start_grpc(
    gateway: Gateway, host: str, port: int, tls: tuple[Path, Path] | None = None
) -> tuple[grpc.aio.Server, int]:
    """Bind and start the public gRPC server (TLS when given cert and key); returns it, port."""
    # the engine's interceptor: malformed messages get INVALID_ARGUMENT, never a traceback
    server = grpc.aio.server(interceptors=[ErrorInterceptor(retry_after=1.0)])
    service_pb2_grpc.add_TesseraServicer_to_server(TesseraServicer(gateway), server)
    # reflection (stream-stream, which ErrorInterceptor passes through as it is): grpcurl
    # lists, describes and calls tessera.v1.Tessera without the .proto files
    tessera = service_pb2.DESCRIPTOR.services_by_name["Tessera"].full_name
    reflection.enable_server_reflection((tessera, reflection.SERVICE_NAME), server)
    if tls is not None:
        bound = server.add_secure_port(f"{host}:{port}", grpc_server_credentials(*tls))
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC on {host}:{port}")
    await server.start()
    return server, bound
