"""`tessera engine` as a real process: ready over HTTP, SIGTERM drains in-flight work, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from engine.api import EngineUnavailableError, FinishReason, SamplingParams
from engine.api.grpc_client import GrpcEngineClient
from tessera.http_server import free_port

LONG = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 240.0) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        assert proc.poll() is None, f"engine exited early with {proc.returncode}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("engine never became ready")


@pytest.fixture
def engine_process() -> tuple[subprocess.Popen[bytes], int, int]:
    grpc_port, http_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "tessera.cli",
        "engine",
        "--model",
        "dummy:tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(grpc_port),
        "--metrics-port",
        str(http_port),
        "--kv-cache-memory",
        "64MiB",
        "--max-model-len",
        "512",
        "--drain-timeout",
        "60",
        "--no-native-kernels",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
    try:
        wait_ready(proc, http_port)
        yield proc, grpc_port, http_port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_sigterm_finishes_in_flight_requests_then_exits_zero(
    engine_process: tuple[subprocess.Popen[bytes], int, int],
) -> None:
    proc, grpc_port, _ = engine_process
    client = GrpcEngineClient(f"127.0.0.1:{grpc_port}")
    try:
        streams = [await client.generate(f"request {i}:", LONG) for i in range(8)]
        firsts = [await anext(aiter(s)) for s in streams]
        assert not any(o.finished for o in firsts)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        with pytest.raises(EngineUnavailableError):
            await client.generate("too late", LONG)

        async def rest(stream: object) -> list:
            return [o async for o in stream]  # type: ignore[attr-defined]

        finals = await asyncio.gather(*(rest(s) for s in streams))
        for first, outs in zip(firsts, finals, strict=True):
            assert outs[-1].deltas[0].finish_reason is FinishReason.LENGTH
            assert first.num_output_tokens + sum(len(o.deltas[0].token_ids) for o in outs) == 400
    finally:
        await client.close()
    assert await asyncio.to_thread(proc.wait, 60) == 0
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in stderr
