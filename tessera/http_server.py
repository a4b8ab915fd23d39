"""Run an ASGI app inside an existing event loop, leaving signals to the process's owner."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The service decides what SIGTERM means (drain first); uvicorn must not exit on it.
        yield


class HTTPServer:
    """uvicorn serving one app on host:port (0 picks a free port) until stop()."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        tls: tuple[Path, Path] | None = None,
        **uvicorn_options: Any,
    ) -> None:
        options = {"log_level": "warning", "lifespan": "off", **uvicorn_options}
        if tls is not None:  # (certificate, key), PEM
            options.update(ssl_certfile=str(tls[0]), ssl_keyfile=str(tls[1]))
        self._server = _Server(uvicorn.Config(app, host=host, port=port, **options))
        self._task: asyncio.Task[None] | None = None
        self.port = port

    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        sock = self._server.config.bind_socket()
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raise the start-up error
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let open requests finish briefly, then return."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound right now (in use, not an address of this machine),
    or None when it can (0, "pick one", always can). Checked before a server loads a model, so
    a taken port costs a second, not a minute of loading."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and grpc bind
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for tests and local defaults)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def grpc_server_credentials(cert: Path, key: Path) -> Any:
    """TLS credentials of a gRPC server from PEM files."""
    import grpc

    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
