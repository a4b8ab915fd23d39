"""The engine pod: gRPC service + HTTP /metrics, /health, /ready; load, serve, drain, exit.

Start-up order: both servers bind first and report NOT_SERVING, the model loads
and warms up in a worker thread (the event loop keeps answering health checks),
then health turns SERVING. SIGTERM turns it NOT_SERVING, refuses new work with
UNAVAILABLE, lets in-flight streams finish within the drain timeout (aborting
what is left), then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.api import EngineUnavailableError
from engine.async_engine import AsyncEngine
from engine.config import EnginePodConfig
from engine.llm_engine import EngineStats, LLMEngine
from engine.metrics import EngineMetrics
from engine.model_source import ModelBundle
from engine.service.errors import status_for
from engine.service.servicer import EngineServicer
from tessera.engine.v1 import engine_pb2, engine_pb2_grpc
from tessera.grpc_errors import ErrorInterceptor
from tessera.http_server import HTTPServer, grpc_server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name
_NO_STATS = EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class BoundPorts:
    grpc: int
    http: int


class EnginePod:
    """One engine behind gRPC and HTTP, with its lifecycle: loading → serving → draining."""

    def __init__(self, config: EnginePodConfig, bundle: ModelBundle | None = None) -> None:
        self.config = config
        self._bundle = bundle
        self._engine: AsyncEngine | None = None
        self._state = "loading"
        self._inflight: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.metrics = EngineMetrics(self.registry, self._stats)
        self._ready_gauge = Gauge(
            "tessera_engine_ready", "1 when the engine accepts requests.", registry=self.registry
        )
        self.health = health.aio.HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._http: HTTPServer | None = None
        self.ports = BoundPorts(0, 0)

    # ---- what the servicer sees (EngineHost) -----------------------------
    @property
    def engine(self) -> AsyncEngine | None:
        return self._engine

    @property
    def accepting(self) -> bool:
        return self._state == "serving" and self._engine is not None and self._engine.is_running

    @property
    def state(self) -> str:
        return self._state

    def accepting_engine(self) -> AsyncEngine:
        if self._state == "loading":
            raise EngineUnavailableError("the engine is loading its model; retry shortly")
        if self._state != "serving":
            raise EngineUnavailableError("the engine is draining; send the request elsewhere")
        assert self._engine is not None
        if not self._engine.is_running:
            raise EngineUnavailableError("the engine loop has stopped")
        return self._engine

    def track(self, request_id: str) -> None:
        self._inflight.add(request_id)
        self._idle.clear()

    def untrack(self, request_id: str) -> None:
        self._inflight.discard(request_id)
        if not self._inflight:
            self._idle.set()

    def _stats(self) -> EngineStats:
        return self._engine.stats() if self._engine is not None else _NO_STATS

    # ---- lifecycle -------------------------------------------------------
    async def start(self) -> BoundPorts:
        """Bind gRPC and HTTP (both NOT_SERVING until load() finishes)."""
        srv = self.config.server
        options = [
            ("grpc.max_receive_message_length", srv.max_message_bytes),
            ("grpc.max_send_message_length", srv.max_message_bytes),
        ]
        interceptor = ErrorInterceptor(status_for, srv.retry_after, self._count_error)
        self._grpc = grpc.aio.server(interceptors=[interceptor], options=options)
        engine_pb2_grpc.add_EngineServiceServicer_to_server(EngineServicer(self), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        # reflection: grpcurl and other tools list and call the services without the .proto files
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_name, reflection.SERVICE_NAME), self._grpc
        )
        await self._set_health(_NOT_SERVING)
        address = f"{srv.host}:{srv.port}"
        if srv.tls_cert is not None and srv.tls_key is not None:
            creds = grpc_server_credentials(srv.tls_cert, srv.tls_key)
            grpc_port = self._grpc.add_secure_port(address, creds)
        else:
            grpc_port = self._grpc.add_insecure_port(address)
        if grpc_port == 0:
            raise OSError(f"cannot bind gRPC on {srv.host}:{srv.port}")
        await self._grpc.start()
        self._http = HTTPServer(self._http_app(), srv.host, srv.metrics_port)
        self.ports = BoundPorts(grpc_port, await self._http.start())
        log.info("engine pod listening: gRPC :%d, HTTP :%d", grpc_port, self.ports.http)
        return self.ports

    async def load(self) -> None:
        """Load and warm the model off the event loop, then turn SERVING."""
        t0 = time.perf_counter()
        # Built on the engine thread (AsyncEngine: one OpenMP team), off the event loop.
        self._engine = await asyncio.to_thread(
            AsyncEngine, lambda: LLMEngine(self.config, self._bundle), self.metrics
        )
        core = self._engine.engine
        Gauge(
            "tessera_engine_info",
            "Static description of the engine (value 1).",
            ["model", "backend", "quantization", "device", "dtype"],
            registry=self.registry,
        ).labels(
            core.bundle.name,
            core.capacity.backend,
            core.capacity.quantization,
            core.capacity.device,
            core.capacity.dtype,
        ).set(1)
        self._state = "serving"
        self._ready_gauge.set(1)
        await self._set_health(_SERVING)
        log.info("engine ready in %.1fs: %s", time.perf_counter() - t0, core.capacity.summary())
        log.info("%s", core.speculation_summary())

    async def drain(self, timeout: float | None = None) -> int:
        """Refuse new work, wait for in-flight streams, abort stragglers; returns #aborted."""
        timeout = self.config.server.drain_timeout if timeout is None else timeout
        if self._state == "serving":
            self._state = "draining"
        self._ready_gauge.set(0)
        await self._set_health(_NOT_SERVING)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        left = list(self._inflight)
        if left and self._engine is not None:
            log.warning("drain timeout: aborting %d request(s)", len(left))
            for rid in left:
                self._engine.abort(rid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 5.0)
        return len(left)

    async def stop(self) -> None:
        """Close the servers and the engine thread."""
        self._state = "stopped"
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._http is not None:
            await self._http.stop()
        if self._engine is not None:
            await asyncio.to_thread(self._engine.shutdown)

    def request_stop(self) -> None:
        """Ask serve_forever() to drain and exit (the SIGTERM handler)."""
        self._stop.set()

    async def serve_forever(self) -> int:
        """start → load → wait for SIGTERM/SIGINT → drain → stop; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        load = asyncio.create_task(self.load())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({load, stop}, return_when=asyncio.FIRST_COMPLETED)
        if load.done() and load.exception() is not None:
            await self.stop()
            raise load.exception()  # type: ignore[misc]
        await stop
        log.info("stopping: draining for up to %.0fs", self.config.server.drain_timeout)
        if not load.done():
            load.cancel()
        await self.drain()
        await self.stop()
        return 0

    # ---- helpers ---------------------------------------------------------
    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    def _count_error(self, method: str, code: grpc.StatusCode) -> None:
        self.metrics.rpc_errors.labels(method, code.name).inc()

    def _http_app(self) -> Starlette:
        async def metrics(_: Request) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        async def healthz(_: Request) -> Response:
            # liveness: the process answers and, once loaded, the engine loop is alive
            alive = self._engine is None or self._engine.is_running or self._state == "stopped"
            return JSONResponse({"status": "ok" if alive else "dead"}, 200 if alive else 503)

        async def ready(_: Request) -> Response:
            ok = self.accepting
            return JSONResponse({"ready": ok, "state": self._state}, 200 if ok else 503)

        return Starlette(
            routes=[
                Route("/metrics", metrics),
                Route("/health", healthz),
                Route("/ready", ready),
            ]
        )
