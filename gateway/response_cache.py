"""Exact-match cache of deterministic responses, scoped per API key and model version."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from typing import Any, Protocol

from gateway.redis_state import RedisHealth


def is_cacheable(request: dict[str, Any]) -> bool:
    """Deterministic: greedy (temperature 0), or sampled with a fixed seed."""
    return request.get("temperature") == 0 or request.get("seed") is not None


def cache_key(scope: str, model_version: str, route: str, request: dict[str, Any]) -> str:
    """Key over everything that shapes the output (the caller drops stream/user fields).

    ``scope`` is the API key's id, so one key's entries never answer another key.
    """
    canonical = json.dumps(
        [scope, model_version, route, request],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "rc:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None:
        """The cached value, or None (also when the store is unavailable)."""

    async def put(self, key: str, value: dict[str, Any], ttl: float) -> None:
        """Store a value for ttl seconds (best effort)."""


class MemoryResponseCache:
    """LRU with TTL, for one process without Redis."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    async def get(self, key: str) -> dict[str, Any] | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    async def put(self, key: str, value: dict[str, Any], ttl: float) -> None:
        self._items[key] = (time.monotonic() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


class RedisResponseCache:
    """JSON values with SET EX; any Redis failure is a miss, reported to RedisHealth."""

    def __init__(self, redis: Any, health: RedisHealth, prefix: str = "tessera:") -> None:
        self.redis, self.health, self.prefix = redis, health, prefix

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.redis.get(self.prefix + key)
        except Exception as e:
            self.health.failed("response cache read", e)
            return None
        self.health.succeeded()
        return json.loads(raw) if raw else None

    async def put(self, key: str, value: dict[str, Any], ttl: float) -> None:
        try:
            await self.redis.set(self.prefix + key, json.dumps(value), ex=max(1, int(ttl)))
            self.health.succeeded()
        except Exception as e:
            self.health.failed("response cache write", e)
