"""The sidecar process: bind HTTP (not ready), load, serve, drain on SIGTERM, stop.

The port answers /health at once and /ready with 503 while the embedder
compiles or loads and the collections open; SIGTERM turns /ready 503, refuses
new /v1 requests with 503, lets in-flight ones (ingests above all) finish
within the drain timeout, then exits. Anything acknowledged is on disk already;
the drain only spares callers a dropped connection.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from prometheus_client import Gauge, ProcessCollector

from services.rag.api.app import Lifecycle, build_app
from services.rag.config import RagConfig
from services.rag.service import RagService
from tessera.http_server import HTTPServer

log = logging.getLogger(__name__)


class RagServer:
    """RagService behind HTTP with its lifecycle: loading → serving → draining → stopped."""

    def __init__(self, config: RagConfig, service: RagService | None = None) -> None:
        self.config = config
        self.service = service or RagService(config)
        ProcessCollector(registry=self.service.registry)
        self._ready_gauge = Gauge(
            "tessera_rag_ready",
            "1 when the sidecar accepts requests.",
            registry=self.service.registry,
        )
        self.lifecycle = Lifecycle()
        self._http: HTTPServer | None = None
        self._stop = asyncio.Event()
        self.port = 0

    async def start(self) -> int:
        """Bind the HTTP port (requests get 503 until load() finishes); returns the port."""
        app = build_app(self.service, self.lifecycle, self.config.server.max_request_bytes)
        self._http = HTTPServer(app, self.config.server.host, self.config.server.port)
        self.port = await self._http.start()
        log.info("RAG sidecar listening on :%d", self.port)
        return self.port

    async def load(self) -> None:
        t0 = time.perf_counter()
        await self.service.start()
        self.lifecycle.state = "serving"
        self._ready_gauge.set(1)
        log.info("RAG sidecar ready on :%d in %.1fs", self.port, time.perf_counter() - t0)

    async def drain(self, timeout: float | None = None) -> int:
        """Refuse new work and wait for in-flight requests; returns how many were left."""
        timeout = self.config.server.drain_timeout if timeout is None else timeout
        self.lifecycle.state = "draining"
        self._ready_gauge.set(0)
        deadline = time.monotonic() + timeout
        while self.lifecycle.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.lifecycle.inflight

    async def stop(self) -> None:
        self.lifecycle.state = "stopped"
        if self._http is not None:
            await self._http.stop()
        await self.service.close()

    def request_stop(self) -> None:
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
        if not load.done():
            load.cancel()
        left = await self.drain()
        if left:
            log.warning("drain timeout: %d request(s) still running", left)
        await self.stop()
        return 0
