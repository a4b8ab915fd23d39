"""Real `tessera engine` processes for tests (tiny random weights, loopback only)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from tessera.http_server import free_port

# Their stderr is a pipe read only once they exit: at WARNING it never fills (at the INFO
# default, the access line per request of a long run would fill it and block the server).
TESSERA = (sys.executable, "-m", "tessera.cli", "--log-level", "WARNING")


class EngineProcess:
    """One engine pod subprocess on free loopback ports."""

    def __init__(self, grpc_port: int | None = None, http_port: int | None = None) -> None:
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, *extra: str) -> EngineProcess:
        cmd = [
            *TESSERA,
            "engine",
            "--model",
            "dummy:tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.http_port),
            "--kv-cache-memory",
            "64MiB",
            "--max-model-len",
            "512",
            "--no-native-kernels",
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ
        )
        return self

    def wait_ready(self, timeout: float = 240.0) -> EngineProcess:
        assert self.proc is not None
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"engine exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                r = httpx.get(f"http://127.0.0.1:{self.http_port}/ready", timeout=1)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("engine never became ready")

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self.kill()


def start_engines(n: int) -> list[EngineProcess]:
    """n engine processes, started together and all ready (stop() them when done)."""
    procs = [EngineProcess().start() for _ in range(n)]
    try:
        for p in procs:
            p.wait_ready()
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs


def start_serve(*extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """`tessera serve` on tiny random weights as a process, ready; returns it and its port."""
    port = free_port()
    cmd = [
        *TESSERA, "serve", "--model", "dummy:tiny",
        "--port", str(port), "--grpc-port", str(free_port()), "--kv-cache-memory", "64MiB",
        "--max-model-len", "512", "--no-native-kernels", "--no-rag", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ)
    t_end = time.monotonic() + 240
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"tessera serve exited with {proc.returncode}: {err[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("tessera serve never became ready")


async def gateway_over(engines: list[EngineProcess], policy: str) -> object:
    """A started in-process gateway routing to the engine processes (all healthy)."""
    import asyncio

    from gateway.config import GatewayConfig
    from gateway.core import Gateway
    from gateway.server import GatewayServer

    config = GatewayConfig(
        http={"host": "127.0.0.1", "port": 0, "grpc_port": 0},
        routing={"engines": [e.address for e in engines], "policy": policy,
                 "health_interval": 0.3},
        redis={"url": None},
    )  # fmt: skip
    server = GatewayServer(Gateway(config))
    await server.start()
    for _ in range(100):
        if len(server.gateway.pool.healthy()) == len(engines):
            break
        await asyncio.sleep(0.1)
    return server
