"""Keys, limits and the response cache on their own: hashing, constant-time compare,
shared budgets across replicas, degradation when Redis is down, cache scoping."""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.auth import ANONYMOUS, APIKeyStore, Principal, new_key, parse_api_key
from gateway.ratelimit import MemoryRateLimiter, RedisRateLimiter
from gateway.redis_state import RedisHealth
from gateway.response_cache import MemoryResponseCache, RedisResponseCache, cache_key, is_cacheable
from gateway.settings_parts import AuthConfig, RateLimitConfig
from tests.integration.gateway_fixtures import REDIS_URL


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def prefix() -> str:
    return f"tessera-test-{secrets.token_hex(4)}:"


def test_keys_file_stores_only_hashes_and_authenticates(tmp_path: Path) -> None:
    key, entry = new_key("team-a")
    entry["rpm"] = 7
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([entry]))
    assert key not in path.read_text()
    store = APIKeyStore.from_config(AuthConfig(keys_file=path))
    principal = store.authenticate(key)
    assert principal is not None and principal.name == "team-a" and principal.rpm == 7
    assert key not in repr(principal)
    assert store.authenticate(key + "x") is None and store.authenticate(None) is None


def test_every_key_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [new_key(f"k{i}")[0] for i in range(5)]
    store = APIKeyStore.from_config(AuthConfig(api_keys=keys))
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert store.authenticate(keys[0]) is not None
    assert len(calls) == 5


def test_open_mode_is_anonymous_and_bearer_parsing() -> None:
    assert APIKeyStore.from_config(AuthConfig()).authenticate(None) is ANONYMOUS
    assert parse_api_key("Bearer  sk-1 ") == "sk-1"
    assert parse_api_key("Basic abc", "sk-2") == "sk-2"
    assert parse_api_key(None) is None


async def test_replicas_share_one_budget_under_concurrency(redis: aioredis.Redis) -> None:
    p, config = prefix(), RateLimitConfig(rpm=10)
    replicas = [RedisRateLimiter(redis, config, RedisHealth(), p) for _ in range(2)]
    who = Principal("k1", "k1")
    decisions = await asyncio.gather(*(replicas[i % 2].admit(who, 1) for i in range(50)))
    assert sum(d.allowed for d in decisions) == 10
    refused = next(d for d in decisions if not d.allowed)
    assert refused.limit == "rpm" and 0 < refused.retry_after <= 60


async def test_token_budget_exhaustion_refuses_with_retry_after(redis: aioredis.Redis) -> None:
    limiter = RedisRateLimiter(redis, RateLimitConfig(tpm=100), RedisHealth(), prefix())
    who = Principal("k2", "k2")
    assert (await limiter.admit(who, 10)).allowed
    await limiter.charge(who, 120)
    d = await limiter.admit(who, 10)
    assert not d.allowed and d.limit == "tpm" and d.retry_after > 0
    assert (await limiter.admit(Principal("k3", "k3"), 10)).allowed  # another key is untouched


async def test_memory_limiter_counts_rpm_and_tpm() -> None:
    limiter = MemoryRateLimiter(RateLimitConfig(rpm=2, tpm=50))
    who = Principal("m", "m")
    assert (await limiter.admit(who, 1)).allowed and (await limiter.admit(who, 1)).allowed
    assert (await limiter.admit(who, 1)).limit == "rpm"
    other = Principal("n", "n")
    await limiter.charge(other, 60)
    assert (await limiter.admit(other, 1)).limit == "tpm"


@pytest.mark.parametrize(("mode", "allowed"), [("open", True), ("closed", False)])
async def test_dead_redis_degrades_quickly_and_logs_once(
    mode: str, allowed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    dead = aioredis.from_url(
        "redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2
    )
    health = RedisHealth()
    limiter = RedisRateLimiter(dead, RateLimitConfig(rpm=5, failure_mode=mode), health)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    decisions = [await limiter.admit(Principal("d", "d"), 1) for _ in range(5)]
    assert (time.perf_counter() - t0) / 5 < 0.5
    assert all(d.allowed is allowed for d in decisions)
    assert health.failures == 5 and not health.healthy
    assert caplog.text.count("redis unavailable") == 1
    await dead.aclose()


async def test_cache_is_scoped_by_key_and_model_version(redis: aioredis.Redis) -> None:
    cache = RedisResponseCache(redis, RedisHealth(), prefix())
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    key_a = cache_key("key-a", "model@v1", "chat", body)
    await cache.put(key_a, {"answer": 1}, ttl=30)
    assert await cache.get(key_a) == {"answer": 1}
    assert await cache.get(cache_key("key-b", "model@v1", "chat", body)) is None
    assert await cache.get(cache_key("key-a", "model@v2", "chat", body)) is None
    assert (
        await cache.get(cache_key("key-a", "model@v1", "chat", {**body, "max_tokens": 3})) is None
    )


async def test_memory_cache_expires_and_evicts() -> None:
    cache = MemoryResponseCache(max_entries=2)
    await cache.put("a", {"v": 1}, ttl=0.05)
    await cache.put("b", {"v": 2}, ttl=30)
    await cache.put("c", {"v": 3}, ttl=30)
    assert await cache.get("a") is None  # evicted (oldest) or expired
    await cache.put("d", {"v": 4}, ttl=0.01)
    await asyncio.sleep(0.03)
    assert await cache.get("d") is None and await cache.get("c") == {"v": 3}


def test_only_deterministic_requests_are_cacheable() -> None:
    assert is_cacheable({"temperature": 0})
    assert is_cacheable({"temperature": 0.7, "seed": 3})
    assert not is_cacheable({"temperature": 0.7})
