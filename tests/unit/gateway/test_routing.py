"""Routing policies: round robin cycles, least outstanding balances, prefix affinity sticks
conversations to one engine yet respects the load bound."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.engines.routing import (
    Endpoint,
    LeastOutstanding,
    PrefixAffinity,
    RoundRobin,
    affinity_key,
)


def endpoints(n: int) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i}:50061", client=None, healthy=True) for i in range(n)]  # type: ignore[arg-type]


def test_round_robin_cycles_in_a_stable_order() -> None:
    eps, policy = endpoints(3), RoundRobin()
    picks = [policy.choose(eps, None).name for _ in range(6)]
    assert picks[:3] == picks[3:] and len(set(picks[:3])) == 3


def test_least_outstanding_picks_the_idlest() -> None:
    eps = endpoints(3)
    eps[0].outstanding, eps[1].outstanding, eps[2].outstanding = 4, 1, 3
    assert LeastOutstanding().choose(eps, "k") is eps[1]


def conversation(turns: int, system: str = "You are a helpful assistant.") -> list[dict[str, Any]]:
    msgs = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Tell me about Paris."},
    ]
    for t in range(turns):
        msgs += [
            {"role": "assistant", "content": f"answer {t}"},
            {"role": "user", "content": f"q{t}"},
        ]
    return msgs


def test_every_turn_of_a_conversation_has_the_same_affinity_key() -> None:
    keys = {affinity_key(conversation(t), None) for t in range(5)}
    assert len(keys) == 1


def test_prefix_affinity_sticks_and_is_deterministic_across_replicas() -> None:
    eps_a, eps_b = endpoints(4), endpoints(4)
    key = affinity_key(conversation(0), None)
    a = {PrefixAffinity().choose(eps_a, key).name for _ in range(10)}
    b = {PrefixAffinity().choose(eps_b, key).name for _ in range(10)}
    assert len(a) == 1 and a == b


def test_prefix_affinity_spreads_distinct_conversations() -> None:
    eps, policy = endpoints(4), PrefixAffinity()
    picks = Counter(policy.choose(eps, f"user:conversation {i}").name for i in range(400))
    assert len(picks) == 4 and min(picks.values()) > 40


def test_prefix_affinity_moves_off_an_overloaded_engine() -> None:
    eps, policy = endpoints(3), PrefixAffinity(load_factor=1.25)
    key = "user:hot prefix"
    home = policy.choose(eps, key)
    home.outstanding = 10
    other = policy.choose(eps, key)
    assert other is not home
    home.outstanding = 0
    assert policy.choose(eps, key) is home


async def test_dns_discovery_resolves_every_address_and_drops_vanished_ones() -> None:
    from gateway.engines.pool import EnginePool, PoolSettings

    made: list[str] = []

    class Unreachable:
        def __init__(self, name: str) -> None:
            made.append(name)

        async def info(self) -> None:
            raise ConnectionError("nobody home")

        async def close(self) -> None:
            return None

    pool = EnginePool(
        PoolSettings(dns="localhost:50999", health_interval=0.2),
        RoundRobin(),
        client_factory=Unreachable,  # type: ignore[arg-type]
    )
    await pool.refresh()
    assert "127.0.0.1:50999" in pool.endpoints
    assert not pool.healthy()  # discovered but failing its health check
    pool.settings = PoolSettings(engines=("10.9.9.9:1",), health_interval=0.2)
    await pool.refresh()
    assert list(pool.endpoints) == ["10.9.9.9:1"]


async def test_pool_logs_an_engine_turning_healthy_at_info_and_leaving_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.engines.pool import EnginePool, PoolSettings

    caplog.set_level(logging.INFO, logger="gateway.engines.pool")
    info = SimpleNamespace(accepting=True, model="dummy:tiny")

    class Engine:
        def __init__(self, name: str) -> None:
            pass

        async def info(self) -> SimpleNamespace:
            return info

        async def close(self) -> None:
            return None

    pool = EnginePool(
        PoolSettings(engines=("10.9.9.9:1",), health_interval=0.2),
        RoundRobin(),
        client_factory=Engine,  # type: ignore[arg-type]
    )
    await pool.refresh()
    info.accepting = False
    await pool.refresh()
    lines = [
        (r.levelname, r.getMessage()) for r in caplog.records if "10.9.9.9:1" in r.getMessage()
    ]
    assert lines[-2:] == [
        ("INFO", "engine 10.9.9.9:1 is healthy (dummy:tiny)"),
        ("WARNING", "engine 10.9.9.9:1 stopped accepting (warming or draining)"),
    ]
