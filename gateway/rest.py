"""The REST front: OpenAI-compatible routes over the shared handlers, SSE streaming,
OpenAI-shaped errors for everything (validation, auth, limits, unknown routes)."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api import chat, completions, embeddings, models, tokenize
from gateway.api.chat import UNSUPPORTED_CHAT_FIELDS
from gateway.api.completions import UNSUPPORTED_COMPLETION_FIELDS
from gateway.errors import APIError, bad_request

if TYPE_CHECKING:
    from gateway.core import Gateway

log = logging.getLogger(__name__)
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


def create_app(gw: Gateway) -> FastAPI:
    """The OpenAI-compatible REST app of a Gateway: one router per endpoint module."""
    app = FastAPI(
        title="Tessera",
        version=gw.version,
        description="OpenAI-compatible API of the Tessera serving stack.",
        responses=ERROR_RESPONSES,
    )
    app.state.gateway = gw

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc, exc.request_id or getattr(request.state, "request_id", None))

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

    routers = (chat.router, completions.router, embeddings.router, models.router, tokenize.router)
    for router in routers:
        app.include_router(router)

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
