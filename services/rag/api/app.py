"""The FastAPI app: routers, error bodies, readiness gate, in-flight tracking, probes."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from services.rag.api import collections, embeddings
from services.rag.api.errors import error_response, install_error_handlers
from services.rag.errors import RagUnavailableError, RequestTooLargeError
from services.rag.service import RagService

log = logging.getLogger(__name__)


class Lifecycle:
    """What the HTTP side needs to know of the server's state: loading, serving, draining."""

    def __init__(self) -> None:
        self.state = "loading"
        self.inflight = 0

    @property
    def accepting(self) -> bool:
        return self.state == "serving"


def build_app(service: RagService, lifecycle: Lifecycle, max_request_bytes: int) -> FastAPI:
    """The sidecar's HTTP API over ``service``."""
    app = FastAPI(title="Tessera RAG sidecar", docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.lifecycle = lifecycle
    install_error_handlers(app)
    app.include_router(embeddings.router)
    app.include_router(collections.router)

    @app.middleware("http")
    async def gate(request: Request, call_next: Callable[[Request], Awaitable[Response]]):
        if not request.url.path.startswith("/v1/"):
            return await call_next(request)
        if not lifecycle.accepting:
            why = "loading" if lifecycle.state == "loading" else "draining"
            return error_response(RagUnavailableError(f"the RAG sidecar is {why}; retry shortly"))
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_request_bytes:
            message = f"request body over {max_request_bytes} bytes"
            return error_response(RequestTooLargeError(message, "body"))
        lifecycle.inflight += 1
        t0, status = time.perf_counter(), 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            lifecycle.inflight -= 1
            log.info(
                "%s %s %d",
                request.method,
                request.url.path,
                status,
                extra={
                    "request_id": request.headers.get("x-request-id"),
                    "method": request.method,
                    "path": request.url.path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - t0) * 1000, 1),
                },
            )

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok = lifecycle.accepting and service.ready
        return JSONResponse({"ready": ok, "state": lifecycle.state}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    return app
