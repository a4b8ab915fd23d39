"""Byte caches for query embeddings and retrieval results: Redis, or memory when embedded.

A cache never fails a request: a Redis error or timeout counts as a miss (and
is counted in ``errors``). Keys carry the configured prefix; retrieval keys
also carry the collection's uid and version, so an ingest or delete (a new
version) or a re-created collection (a new uid) can never be served a stale
result, and old entries simply expire.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from services.rag.config import CacheConfig

log = logging.getLogger(__name__)


class ByteCache(Protocol):
    """get-many / set-many of bytes with a time to live."""

    errors: int

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, items: dict[str, bytes], ttl: float) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """An LRU in this process, bounded in entries (the embedded mode's stand-in for Redis)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.errors = 0
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        out: list[bytes | None] = []
        for key in keys:
            entry = self._data.get(key)
            if entry is None or entry[0] < now:
                out.append(None)
                continue
            self._data.move_to_end(key)
            out.append(entry[1])
        return out

    async def set_many(self, items: dict[str, bytes], ttl: float) -> None:
        expires = time.monotonic() + ttl
        for key, value in items.items():
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """redis-py asyncio; every call bounded by the socket timeout, failures are misses."""

    def __init__(self, url: str, socket_timeout: float) -> None:
        import redis.asyncio as aioredis

        self.errors = 0
        self._redis: Any = aioredis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            values: list[bytes | None] = await self._redis.mget(list(keys))
            return values
        except Exception as e:  # Redis down or slow: answer without the cache
            self._failed(e)
            return [None] * len(keys)

    async def set_many(self, items: dict[str, bytes], ttl: float) -> None:
        if not items:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, value, px=int(ttl * 1000))
                await pipe.execute()
        except Exception as e:
            self._failed(e)

    async def close(self) -> None:
        await self._redis.aclose()

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning("Redis cache unavailable (%d errors so far): %s", self.errors, e)


def build_cache(config: CacheConfig) -> ByteCache:
    """Redis when a URL is configured, else memory."""
    if config.redis_url:
        return RedisCache(config.redis_url, config.socket_timeout)
    return MemoryCache(config.max_memory_entries)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class RagCaches:
    """The two caches of the sidecar over one byte store, with their key schemes."""

    def __init__(self, store: ByteCache, config: CacheConfig, model_id: str) -> None:
        self.store = store
        self.config = config
        self._model_id = model_id  # model + precision: an INT8 vector is not a float one

    # ---- query embeddings ------------------------------------------------
    def embedding_key(self, text: str) -> str:
        return f"{self.config.key_prefix}emb:{_digest(self._model_id, text)}"

    async def get_embeddings(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        raw = await self.store.get_many([self.embedding_key(t) for t in texts])
        return [None if r is None else np.frombuffer(r, dtype="<f4").copy() for r in raw]

    async def set_embeddings(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        items = {
            self.embedding_key(t): np.ascontiguousarray(v, dtype="<f4").tobytes()
            for t, v in zip(texts, vectors, strict=True)
        }
        await self.store.set_many(items, self.config.embedding_ttl)

    # ---- retrieval results -----------------------------------------------
    def retrieval_key(
        self, collection: str, uid: str, version: int, query: str, top_k: int, filters: Any
    ) -> str:
        request = json.dumps([query, top_k, filters], sort_keys=True, ensure_ascii=False)
        return (
            f"{self.config.key_prefix}ret:{collection}:{uid}:{version}:"
            f"{_digest(self._model_id, request)}"
        )

    async def get_retrieval(self, key: str) -> list[dict[str, Any]] | None:
        (raw,) = await self.store.get_many([key])
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, list) else None

    async def set_retrieval(self, key: str, hits: list[dict[str, Any]]) -> None:
        await self.store.set_many({key: json.dumps(hits).encode()}, self.config.retrieval_ttl)
