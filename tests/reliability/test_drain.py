"""`tessera serve` under SIGTERM with requests in flight: they complete, new ones are
refused with a retryable status, and the process exits 0 within the drain timeout."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.processes import start_serve


@pytest.fixture
def serve_process() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc, port = start_serve("--drain-timeout", "30")
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_sigterm_completes_in_flight_refuses_new_and_exits_zero(
    serve_process: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = serve_process
    url = f"http://127.0.0.1:{port}/v1/completions"
    long = {"model": "dummy:tiny", "prompt": "Once", "max_tokens": 400, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=120) as http:
        in_flight = [asyncio.create_task(http.post(url, json=long)) for _ in range(4)]
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        try:
            refused = await http.post(url, json={**long, "max_tokens": 2})
            assert refused.status_code == 503
            assert refused.headers["retry-after"]
            assert refused.json()["error"]["type"] == "service_unavailable_error"
        except httpx.ConnectError:
            pass  # already closed: also a refusal a client retries
        done = await asyncio.gather(*in_flight)
    for r in done:
        assert r.status_code == 200
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] == 400
    assert await asyncio.to_thread(proc.wait, 40) == 0
    assert time.monotonic() - t0 < 35
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in stderr
