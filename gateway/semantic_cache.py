"""Semantic cache: an earlier answer to a similar conversation, off by default.

The conversation is embedded (through the RAG service's embedder) and compared by
cosine similarity with earlier ones of the same scope: the same API key, model
version, route and n, never across them. A similarity at or above the threshold
returns the stored answer. Entries live in Redis (one capped list per scope), or
in memory without Redis.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from gateway.redis_state import RedisHealth


def conversation_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def scope_key(*parts: str) -> str:
    return "sc:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _pack(v: np.ndarray) -> str:
    return base64.b64encode(v.astype("<f4").tobytes()).decode()


def _unpack(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4")


class SemanticStore(Protocol):
    async def entries(self, scope: str) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """Live (vector, value) pairs of a scope, newest first."""

    async def add(self, scope: str, vector: np.ndarray, value: dict[str, Any], ttl: float) -> None:
        """Store an entry, keeping the scope's newest ``max_entries``."""


class MemorySemanticStore:
    def __init__(self, max_entries: int, max_scopes: int = 1024) -> None:
        self.max_entries, self.max_scopes = max_entries, max_scopes
        self._scopes: OrderedDict[str, list[tuple[float, np.ndarray, dict[str, Any]]]] = (
            OrderedDict()
        )

    async def entries(self, scope: str) -> list[tuple[np.ndarray, dict[str, Any]]]:
        now = time.monotonic()
        return [(v, value) for exp, v, value in self._scopes.get(scope, []) if exp > now]

    async def add(self, scope: str, vector: np.ndarray, value: dict[str, Any], ttl: float) -> None:
        items = self._scopes.setdefault(scope, [])
        items.insert(0, (time.monotonic() + ttl, vector, value))
        del items[self.max_entries :]
        self._scopes.move_to_end(scope)
        while len(self._scopes) > self.max_scopes:
            self._scopes.popitem(last=False)


class RedisSemanticStore:
    """One capped Redis list per scope; failures degrade to a miss (RedisHealth)."""

    def __init__(self, redis: Any, health: RedisHealth, prefix: str, max_entries: int) -> None:
        self.redis, self.health, self.prefix, self.max_entries = redis, health, prefix, max_entries

    async def entries(self, scope: str) -> list[tuple[np.ndarray, dict[str, Any]]]:
        try:
            raw = await self.redis.lrange(self.prefix + scope, 0, -1)
        except Exception as e:
            self.health.failed("semantic cache read", e)
            return []
        self.health.succeeded()
        now, out = time.time(), []
        for item in raw:
            entry = json.loads(item)
            if entry["expires"] > now:
                out.append((_unpack(entry["vector"]), entry["value"]))
        return out

    async def add(self, scope: str, vector: np.ndarray, value: dict[str, Any], ttl: float) -> None:
        entry = json.dumps({"vector": _pack(vector), "value": value, "expires": time.time() + ttl})
        key = self.prefix + scope
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, entry).ltrim(key, 0, self.max_entries - 1).expire(key, int(ttl) + 1)
                await pipe.execute()
            self.health.succeeded()
        except Exception as e:
            self.health.failed("semantic cache write", e)


class SemanticCache:
    """Looks up and stores answers by conversation similarity."""

    def __init__(
        self,
        embed: Callable[[list[str]], Awaitable[list[list[float]]]],
        store: SemanticStore,
        threshold: float,
        ttl: float,
    ) -> None:
        self.embed, self.store, self.threshold, self.ttl = embed, store, threshold, ttl

    async def vector(self, text: str) -> np.ndarray:
        (v,) = await self.embed([text])
        arr = np.asarray(v, dtype=np.float32)
        norm = float(np.linalg.norm(arr))
        return arr / norm if norm > 0 else arr

    async def lookup(self, scope: str, vector: np.ndarray) -> tuple[dict[str, Any] | None, float]:
        """(the best stored answer if similar enough, its similarity)."""
        entries = await self.store.entries(scope)
        if not entries:
            return None, 0.0
        matrix = np.stack([v for v, _ in entries])
        sims = matrix @ vector
        best = int(np.argmax(sims))
        score = float(sims[best])
        return (entries[best][1] if score >= self.threshold else None), score

    async def add(self, scope: str, vector: np.ndarray, value: dict[str, Any]) -> None:
        await self.store.add(scope, vector, value, self.ttl)
