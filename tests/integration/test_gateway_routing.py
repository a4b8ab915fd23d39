"""Routing over two real engine processes: prefix affinity keeps a conversation on one
engine; a killed engine is ejected and its traffic served by the survivor; it rejoins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from gateway.server import GatewayServer
from tests.integration.processes import EngineProcess, gateway_over, start_engines

MODEL = "dummy:tiny"
SYSTEM = "You are Tessera's test assistant. Answer in one short sentence. " * 4


@pytest.fixture(scope="module")
def engines() -> Iterator[list[EngineProcess]]:
    procs = start_engines(2)
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
async def gateway(engines: list[EngineProcess]) -> AsyncIterator[GatewayServer]:
    server = await gateway_over(engines, "prefix_affinity")
    assert isinstance(server, GatewayServer)
    yield server
    await server.stop()


def client_for(server: GatewayServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0
    )


async def test_prefix_affinity_keeps_a_conversation_on_one_engine(
    gateway: GatewayServer, engines: list[EngineProcess]
) -> None:
    client = client_for(gateway)
    hits_before = [e.metric("tessera_engine_prefix_cache_hits_total") for e in engines]
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is a tessera?"},
    ]
    for turn in range(4):
        r = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, temperature=0
        )
        messages += [
            {"role": "assistant", "content": r.choices[0].message.content or "x"},
            {"role": "user", "content": f"And then {turn}?"},
        ]
    served = sorted(e.served for e in gateway.gateway.pool.endpoints.values())
    assert served == [0, 4]
    hits = [
        e.metric("tessera_engine_prefix_cache_hits_total") - h
        for e, h in zip(engines, hits_before, strict=True)
    ]
    assert max(hits) > 0 and min(hits) == 0
    await client.close()


async def test_killed_engine_is_ejected_and_the_survivor_serves(
    gateway: GatewayServer, engines: list[EngineProcess]
) -> None:
    client = client_for(gateway)
    victim, survivor = engines
    victim.kill()
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=MODEL,
                max_tokens=4,
                temperature=0,
                messages=[{"role": "user", "content": f"question {i}"}],
            )
            for i in range(8)
        )
    )
    assert all(r.choices[0].message.content is not None for r in results)
    assert time.monotonic() - t0 < 5.0
    pool = gateway.gateway.pool
    assert [e.name for e in pool.healthy()] == [survivor.address]

    victim.start().wait_ready()  # the same address comes back
    for _ in range(50):
        if len(pool.healthy()) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(pool.healthy()) == 2
    await client.close()
