"""The REST front: OpenAI-compatible routes over the shared handlers, SSE streaming,
OpenAI-shaped errors for everything (validation, auth, limits, unknown routes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.chat import UNSUPPORTED_CHAT_FIELDS, ChatCompletion, ChatCompletionRequest
from gateway.api.completions import UNSUPPORTED_COMPLETION_FIELDS, Completion, CompletionRequest
from gateway.api.generation import RequestContext, request_id_from
from gateway.api.models import Model, ModelList, get_model, list_models
from gateway.errors import APIError, bad_request
from gateway.rag import EmbeddingList, EmbeddingRequest, create_embeddings

if TYPE_CHECKING:
    from gateway.core import Gateway

log = logging.getLogger(__name__)
T = TypeVar("T")
UNSUPPORTED = {**UNSUPPORTED_CHAT_FIELDS, **UNSUPPORTED_COMPLETION_FIELDS}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {
        "description": text,
        "content": {
            "application/json": {
                "example": {"error": {"message": text, "type": kind, "param": None, "code": None}}
            }
        },
    }
    for code, text, kind in [
        (400, "Invalid request", "invalid_request_error"),
        (401, "Missing or invalid API key", "invalid_request_error"),
        (404, "Unknown model", "invalid_request_error"),
        (413, "Request body too large", "invalid_request_error"),
        (429, "Rate limited or overloaded (see Retry-After)", "rate_limit_error"),
        (503, "No engine available (see Retry-After)", "service_unavailable_error"),
    ]
}


class BodyLimit:
    """413 for bodies over the limit, counted as they stream in (Content-Length not trusted)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self.max_bytes)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    err = APIError(
        413, f"the request body is larger than {limit} bytes", param=None, code="request_too_large"
    )
    return JSONResponse(err.body(), status_code=413)


def _error_response(err: APIError, request_id: str | None = None) -> JSONResponse:
    headers = err.headers()
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    field = loc[0] if loc else None
    if first.get("type") == "extra_forbidden" and field in UNSUPPORTED and len(loc) == 1:
        return APIError(
            400,
            f"{UNSUPPORTED[field]} is not supported by this server",
            param=field,
            code="unsupported_parameter",
        )
    if first.get("type") == "json_invalid":
        return bad_request("the request body is not valid JSON")
    where = ".".join(loc) or "body"
    message = first.get("msg", "invalid request")
    if first.get("type") == "extra_forbidden":
        message = "Unrecognized request argument supplied"
    return bad_request(f"{where}: {message}", param=where)


def _sse(chunks: AsyncIterator[BaseModel], on_end: Any) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        status = "200"
        try:
            async for chunk in chunks:
                yield b"data: " + chunk.model_dump_json(exclude_none=False).encode() + b"\n\n"
        except APIError as e:
            status = str(e.status)
            yield b"data: " + json.dumps(e.body()).encode() + b"\n\n"
        except Exception:
            status = "500"
            log.exception("stream failed")
            err = APIError(500, "internal error while streaming", "server_error")
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
        finally:
            on_end(status)
        yield b"data: [DONE]\n\n"

    return gen()


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await work, cancelling it (and so aborting upstream) if the client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise APIError(499, "client closed the request", "invalid_request_error")
    finally:
        if not task.done():
            task.cancel()


def create_app(gw: Gateway) -> FastAPI:
    app = FastAPI(
        title="Tessera",
        version=gw.version,
        description="OpenAI-compatible API of the Tessera serving stack.",
        responses=ERROR_RESPONSES,
    )

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc, getattr(request.state, "request_id", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(APIError(exc.status_code, str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        incident = secrets.token_hex(6)
        log.error("internal error %s on %s", incident, request.url.path, exc_info=exc)
        return _error_response(
            APIError(500, f"internal error (incident {incident})", "server_error")
        )

    async def context(request: Request, route: str) -> RequestContext:
        rid = request_id_from(request.headers.get("x-request-id"))
        request.state.request_id = rid  # error responses and the access log carry it too
        principal = gw.authenticate(
            request.headers.get("authorization"), request.headers.get("api-key")
        )
        bypass = "no-cache" in request.headers.get("cache-control", "") or (
            request.headers.get("x-tessera-cache", "").lower() == "bypass"
        )
        return RequestContext(principal=principal, request_id=rid, bypass_cache=bypass)

    def headers(ctx: RequestContext) -> dict[str, str]:
        h = {"X-Request-Id": ctx.request_id}
        if ctx.cache_status:
            h["X-Tessera-Cache"] = ctx.cache_status
        return h

    def access_log(request: Request, route: str, status: str, t0: float) -> None:
        log.info(
            "%s %s",
            route,
            status,
            extra={
                "request_id": getattr(request.state, "request_id", None),
                "route": route,
                "status": int(status),
                "duration_ms": round((time.perf_counter() - t0) * 1000, 1),
            },
        )

    async def generate(request: Request, route: str, handler: Any, body: Any) -> Response:
        t0 = time.perf_counter()
        try:
            ctx = await context(request, route)
            result = await handler.create(body, ctx)
        except APIError as e:
            gw.metrics.requests.labels(route, str(e.status)).inc()
            access_log(request, route, str(e.status), t0)
            raise
        if isinstance(result, BaseModel):
            gw.metrics.requests.labels(route, "200").inc()
            gw.metrics.latency.labels(route).observe(time.perf_counter() - t0)
            access_log(request, route, "200", t0)
            return JSONResponse(result.model_dump(mode="json"), headers=headers(ctx))

        def on_end(status: str) -> None:
            gw.metrics.requests.labels(route, status).inc()
            gw.metrics.latency.labels(route).observe(time.perf_counter() - t0)
            access_log(request, route, status, t0)

        return StreamingResponse(
            _sse(result, on_end),
            media_type="text/event-stream",
            headers={**headers(ctx), "Cache-Control": "no-cache"},
        )

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """Chat completion; `stream: true` answers with server-sent events ending in [DONE]."""
        if body.stream:
            return await generate(request, "chat", gw.chat, body)
        return await _until_disconnect(request, generate(request, "chat", gw.chat, body))

    @app.post(
        "/v1/completions",
        response_model=Completion,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """Text completion for one or more prompts (text or token ids)."""
        if body.stream:
            return await generate(request, "completions", gw.completions, body)
        return await _until_disconnect(
            request, generate(request, "completions", gw.completions, body)
        )

    @app.post("/v1/embeddings", response_model=EmbeddingList)
    async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
        """Embeddings from the RAG service's embedder (all-MiniLM-L6-v2, INT8 on CPU)."""
        t0 = time.perf_counter()
        try:
            gw.authenticate(request.headers.get("authorization"), request.headers.get("api-key"))
            result = await create_embeddings(gw.rag, gw.embedding_model, body)
        except APIError as e:
            gw.metrics.requests.labels("embeddings", str(e.status)).inc()
            raise
        gw.metrics.requests.labels("embeddings", "200").inc()
        gw.metrics.latency.labels("embeddings").observe(time.perf_counter() - t0)
        return JSONResponse(result.model_dump(mode="json"))

    @app.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        """The models served by the healthy engines."""
        gw.authenticate(request.headers.get("authorization"), request.headers.get("api-key"))
        return list_models(gw.pool)

    @app.get("/v1/models/{model_id:path}", response_model=Model)
    async def model(model_id: str, request: Request) -> Model:
        """One model."""
        gw.authenticate(request.headers.get("authorization"), request.headers.get("api-key"))
        return get_model(gw.pool, model_id)

    @app.get("/health", include_in_schema=True)
    async def health() -> dict[str, str]:
        """Liveness: the gateway process answers."""
        return {"status": "ok"}

    @app.get("/ready", include_in_schema=True)
    async def ready() -> JSONResponse:
        """Readiness: accepting requests and at least one engine healthy."""
        ok = gw.accepting and bool(gw.pool.healthy())
        body = {
            "ready": ok,
            "healthy_engines": len(gw.pool.healthy()),
            "draining": not gw.accepting,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(gw.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, max_bytes=gw.config.http.max_body_bytes)
    return app
