"""Faults caused for real: an engine SIGKILLed mid-stream behind the gateway."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway.server import GatewayServer
from tests.integration.processes import EngineProcess, gateway_over, start_engines

MODEL = "dummy:tiny"


@pytest.fixture
def engines() -> Iterator[list[EngineProcess]]:
    procs = start_engines(2)
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
async def gateway(engines: list[EngineProcess]) -> AsyncIterator[GatewayServer]:
    server = await gateway_over(engines, "round_robin")
    assert isinstance(server, GatewayServer)
    yield server
    await server.stop()


async def read_stream(
    http: httpx.AsyncClient, url: str, body: dict, started: asyncio.Event, count: list[int]
) -> dict:
    """Read one SSE stream to its end; returns what arrived (every line must be JSON)."""
    events, text = [], ""
    async with http.stream("POST", url, json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                return {"events": events, "text": text, "done": True}
            event = json.loads(data)  # a half-written event would raise here
            events.append(event)
            for c in event.get("choices", []):
                text += c["delta"].get("content") or ""
            if text and not count[0]:
                count[0] = 1
                started.set()
    return {"events": events, "text": text, "done": False}


async def test_engine_killed_mid_stream(
    gateway: GatewayServer, engines: list[EngineProcess]
) -> None:
    url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
    body = {
        "model": MODEL,
        "max_tokens": 450,
        "stream": True,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "go"}],
    }
    async with httpx.AsyncClient(timeout=60) as http:
        flags = [(asyncio.Event(), [0]) for _ in range(6)]
        tasks = [asyncio.create_task(read_stream(http, url, body, ev, c)) for ev, c in flags]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev, _ in flags)), 30)
        victim, survivor = engines
        victim.kill()
        t_kill = time.monotonic()

        # new requests right after the kill: none may be lost
        quick = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        replies = await asyncio.gather(*(http.post(url, json=quick) for _ in range(6)))
        assert [r.status_code for r in replies] == [200] * 6
        assert time.monotonic() - t_kill < 5.0

        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    errors = [r for r in results if any("error" in e for e in r["events"])]
    complete = [r for r in results if not any("error" in e for e in r["events"])]
    assert errors and complete  # round robin put streams on both engines
    for r in results:
        assert r["done"]  # every stream ends with [DONE], none hangs
    for r in errors:
        err = next(e["error"] for e in r["events"] if "error" in e)
        assert err["code"] == "engine_error" and err["type"] == "server_error"
    for r in complete:
        finish = [
            c["finish_reason"] for e in r["events"] for c in e["choices"] if c.get("finish_reason")
        ]
        assert finish == ["length"]
    assert [e.name for e in gateway.gateway.pool.healthy()] == [survivor.address]
