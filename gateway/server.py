"""Gateway processes: `tessera gateway` (engines over gRPC) and `tessera serve` (embedded).

Both bind their ports, serve until SIGTERM/SIGINT, then drain: /ready turns 503,
new generations get 503 with Retry-After, in-flight ones finish within the drain
timeout, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from prometheus_client import ProcessCollector

from gateway.config import GatewayConfig
from gateway.core import Gateway
from gateway.rest import create_app
from tessera.http_server import HTTPServer

log = logging.getLogger(__name__)


class GatewayServer:
    """The REST front (and the public gRPC front) of one Gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config: GatewayConfig = gateway.config
        ProcessCollector(registry=gateway.registry)
        self._http: HTTPServer | None = None
        self._grpc: object | None = None
        self._stop = asyncio.Event()
        self.port = 0
        self.grpc_port = 0
        self.rag_port = 0  # embedded mode: the in-process RAG service's HTTP API
        self.engine_summary = ""  # embedded mode: which backend and mode, and why
        self.on_stop: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        await self.gateway.start()
        h = self.config.http
        tls = (h.tls_cert, h.tls_key) if h.tls_cert is not None and h.tls_key is not None else None
        self._http = HTTPServer(create_app(self.gateway), h.host, h.port, tls=tls)
        self.port = await self._http.start()
        from gateway.grpc_front import start_grpc

        self._grpc, self.grpc_port = await start_grpc(self.gateway, h.host, h.grpc_port, tls)

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        await self.gateway.drain(self.config.http.drain_timeout)
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)  # type: ignore[attr-defined]
        if self._http is not None:
            await self._http.stop()
        await self.gateway.stop()
        for hook in self.on_stop:
            with contextlib.suppress(Exception):
                await hook()

    async def serve_forever(self, banner: Callable[[GatewayServer], str] | None = None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        if banner is not None:
            log.info(banner(self))
        await self._stop.wait()
        log.info("stopping: draining for up to %.0fs", self.config.http.drain_timeout)
        await self.stop()
        return 0
