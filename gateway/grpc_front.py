"""The public gRPC front (tessera.v1.Tessera): the same handlers as REST, other wire format.

Requests become the REST request models (so validation is identical), responses
are the REST response models turned into protos, and APIErrors become status
codes with OpenAI's error fields in the trailing metadata.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection
from pydantic import BaseModel, ValidationError

from gateway.accounting import RequestContext
from gateway.api.chat import ChatCompletionRequest
from gateway.api.completions import CompletionRequest
from gateway.api.embeddings import EmbeddingRequest, create_embeddings
from gateway.core import Gateway
from gateway.errors import bad_request
from tessera.grpc_errors import ErrorInterceptor
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


def _internal(error: Exception) -> tuple[grpc.StatusCode, str, bool]:
    """What escaped the handlers (they map every APIError themselves): INTERNAL, logged."""
    incident = secrets.token_hex(6)
    log.error("internal error %s on the public gRPC API", incident, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident})", False


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _whole_numbers(value: Any) -> Any:
    """A JSON schema read from a protobuf Struct, its integral numbers ints again (Struct
    holds every number as a double; a schema's maxLength of 10.0 is not an integer)."""
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _request_dict(msg: Any, stream: bool) -> dict[str, Any]:
    body = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    body.update(body.pop("sampling", {}))
    schema = body.get("response_format", {}).get("json_schema", {})
    if "schema" in schema:
        schema["schema"] = _whole_numbers(schema["schema"])
    constraint = body.get("structured_outputs", {})
    if "json" in constraint:
        constraint["json"] = _whole_numbers(constraint["json"])
    for tool in body.get("tools", []):
        function = tool.get("function", {})
        if "parameters" in function:
            function["parameters"] = _whole_numbers(function["parameters"])
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
    """The public API over gRPC: each call opens through the gateway's accounting, like a
    REST call, and runs the same handler."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def _open(self, route: str, context: grpc.aio.ServicerContext) -> RequestContext:
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        return self.gw.accounting.open(f"grpc_{route}", metadata)

    async def _fail(
        self,
        context: grpc.aio.ServicerContext,
        ctx: RequestContext | None,
        route: str,
        e: Exception,
    ) -> None:
        error = self.gw.accounting.fail(ctx, f"grpc_{route}", e)
        md = [("error-type", error.type)]
        md += [("error-code", error.code)] if error.code else []
        md += [("error-param", error.param)] if error.param else []
        if error.retry_after is not None:
            md.append(("retry-after-ms", str(int(error.retry_after * 1000))))
        context.set_trailing_metadata(tuple(md))
        await context.abort(_STATUS.get(error.status, grpc.StatusCode.INTERNAL), error.message)

    async def _unary(
        self,
        route: str,
        parse: Callable[[], Any],
        run: Callable[[Any, RequestContext], Awaitable[Any]],
        context: grpc.aio.ServicerContext,
        out: Any,
    ) -> Any:
        ctx: RequestContext | None = None
        try:
            ctx = self._open(route, context)
            result = await run(parse(), ctx)
        except Exception as e:
            await self._fail(context, ctx, route, e)
            raise
        self.gw.accounting.close(ctx, 200)
        if ctx.cache_status:
            await context.send_initial_metadata((("x-tessera-cache", ctx.cache_status),))
        return _to_proto(result, out())

    async def _stream(
        self,
        route: str,
        parse: Callable[[], Any],
        run: Callable[[Any, RequestContext], Awaitable[Any]],
        context: grpc.aio.ServicerContext,
        out: Any,
    ) -> AsyncIterator[Any]:
        ctx: RequestContext | None = None
        try:
            ctx = self._open(route, context)
            chunks = await run(parse(), ctx)
            async for chunk in chunks:
                yield _to_proto(chunk, out())
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await self._fail(context, ctx, route, e)
        if ctx is not None:
            self.gw.accounting.close(ctx, 200)

    async def CreateChatCompletion(self, request: Any, context: Any) -> Any:
        def parse() -> ChatCompletionRequest:
            return _validate(ChatCompletionRequest, _request_dict(request, stream=False))

        out = chat_pb2.ChatCompletion
        return await self._unary("chat", parse, self.gw.chat.create, context, out)

    async def StreamChatCompletion(self, request: Any, context: Any) -> AsyncIterator[Any]:
        def parse() -> ChatCompletionRequest:
            return _validate(ChatCompletionRequest, _request_dict(request, stream=True))

        out = chat_pb2.ChatCompletionChunk
        async for m in self._stream("chat", parse, self.gw.chat.create, context, out):
            yield m

    async def CreateCompletion(self, request: Any, context: Any) -> Any:
        def parse() -> CompletionRequest:
            return _validate(CompletionRequest, _request_dict(request, stream=False))

        out = completions_pb2.Completion
        return await self._unary("completions", parse, self.gw.completions.create, context, out)

    async def StreamCompletion(self, request: Any, context: Any) -> AsyncIterator[Any]:
        def parse() -> CompletionRequest:
            return _validate(CompletionRequest, _request_dict(request, stream=True))

        out = completions_pb2.Completion
        async for m in self._stream("completions", parse, self.gw.completions.create, context, out):
            yield m

    async def CreateEmbeddings(self, request: Any, context: Any) -> Any:
        def parse() -> EmbeddingRequest:
            body = json_format.MessageToDict(request, preserving_proto_field_name=True)
            return _validate(EmbeddingRequest, body)

        async def embed(req: EmbeddingRequest, ctx: RequestContext) -> BaseModel:
            return await create_embeddings(self.gw.rag, self.gw.embedding_model, req)

        out = embeddings_pb2.EmbeddingList
        return await self._unary("embeddings", parse, embed, context, out)

    async def ListModels(self, request: Any, context: Any) -> Any:
        async def models(_: None, ctx: RequestContext) -> BaseModel:
            return await self.gw.catalog.models()

        return await self._unary("models", lambda: None, models, context, models_pb2.ModelList)


async def start_grpc(
    gateway: Gateway, host: str, port: int, tls: tuple[Path, Path] | None = None
) -> tuple[grpc.aio.Server, int]:
    """Bind and start the public gRPC server (TLS when given cert and key); returns it, port."""
    # malformed messages get INVALID_ARGUMENT, never a traceback
    server = grpc.aio.server(interceptors=[ErrorInterceptor(_internal, retry_after=1.0)])
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
