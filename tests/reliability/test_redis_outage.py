"""Redis stops and comes back: the gateway keeps serving (limits fail open, cache misses),
logs the outage once, and recovers by itself."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from engine.model_source import ModelBundle, load_model
from tessera.http_server import free_port
from tests.integration.gateway_fixtures import running_gateway


class RedisServer:
    """A private redis-server on a free port that the test can stop and restart."""

    def __init__(self) -> None:
        self.exe = shutil.which("redis-server")
        assert self.exe, "redis-server is missing: `make test` installs it"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


async def test_gateway_rides_out_a_redis_outage(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    tiny: ModelBundle = load_model("dummy:tiny", seed=3)
    body = {"model": "dummy:tiny", "prompt": "Once upon", "max_tokens": 4, "temperature": 0}
    async with running_gateway(
        tiny, limits={"rpm": 1000}, redis={"url": private_redis.url}
    ) as server:
        url = f"http://127.0.0.1:{server.port}/v1/completions"
        health = server.gateway.redis_health
        async with httpx.AsyncClient(timeout=30) as http:
            first = await http.post(url, json=body)
            assert first.headers["x-tessera-cache"] == "miss"
            assert (await http.post(url, json=body)).headers["x-tessera-cache"] == "hit"

            private_redis.stop()
            t0 = time.perf_counter()
            during = [await http.post(url, json=body) for _ in range(10)]
            assert [r.status_code for r in during] == [200] * 10
            assert all(
                r.json()["choices"][0]["text"] == first.json()["choices"][0]["text"] for r in during
            )
            assert (time.perf_counter() - t0) / 10 < 1.5  # degraded quickly, no stall
            assert not health.healthy and health.failures >= 10
            assert caplog.text.count("redis unavailable") == 1

            private_redis.start()
            for _ in range(50):
                await http.post(url, json=body)
                if health.healthy:
                    break
                await asyncio.sleep(0.1)
            assert health.healthy
            again = await http.post(url, json=body)
            assert again.headers["x-tessera-cache"] in ("hit", "miss")
            assert (await http.post(url, json=body)).headers["x-tessera-cache"] == "hit"
