"""Caches: Redis (real, unique prefix per test) and memory; failures are misses."""

from __future__ import annotations

import asyncio

import numpy as np

from services.rag.cache import MemoryCache, RagCaches, RedisCache
from services.rag.config import CacheConfig
from tests.unit.services.rag.helpers import REDIS_URL, unique_prefix


async def test_redis_cache_round_trips_embeddings_under_its_prefix():
    prefix = unique_prefix()
    store = RedisCache(REDIS_URL, socket_timeout=1.0)
    caches = RagCaches(store, CacheConfig(key_prefix=prefix, redis_url=REDIS_URL), "m:int8")
    vec = np.arange(4, dtype=np.float32)
    assert await caches.get_embeddings(["q"]) == [None]
    await caches.set_embeddings(["q"], vec[None, :])
    (found,) = await caches.get_embeddings(["q"])
    np.testing.assert_array_equal(found, vec)
    keys = [k async for k in store._redis.scan_iter(match=prefix + "*")]
    assert keys == [caches.embedding_key("q").encode()]
    await store._redis.delete(*keys)
    await store.close()


async def test_redis_entries_expire_after_their_ttl():
    store = RedisCache(REDIS_URL, socket_timeout=1.0)
    key = unique_prefix() + "k"
    await store.set_many({key: b"v"}, ttl=0.05)
    assert await store.get_many([key]) == [b"v"]
    await asyncio.sleep(0.1)
    assert await store.get_many([key]) == [None]
    await store.close()


async def test_unreachable_redis_is_a_miss_not_an_error():
    store = RedisCache("redis://127.0.0.1:1/0", socket_timeout=0.2)
    assert await store.get_many(["a", "b"]) == [None, None]
    await store.set_many({"a": b"1"}, ttl=1)
    assert store.errors == 2
    await store.close()


async def test_memory_cache_is_bounded_lru_with_ttl():
    cache = MemoryCache(max_entries=2)
    await cache.set_many({"a": b"1", "b": b"2"}, ttl=10)
    await cache.get_many(["a"])  # a is now the most recent
    await cache.set_many({"c": b"3"}, ttl=10)
    assert await cache.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
    await cache.set_many({"d": b"4"}, ttl=-1)
    assert await cache.get_many(["d"]) == [None]


def test_retrieval_keys_change_with_version_uid_model_and_request():
    caches = RagCaches(MemoryCache(8), CacheConfig(key_prefix="p:"), "m:int8")
    base = caches.retrieval_key("c", "u1", 1, "q", 4, {})
    assert base.startswith("p:ret:c:u1:1:")
    assert base != caches.retrieval_key("c", "u1", 2, "q", 4, {})
    assert base != caches.retrieval_key("c", "u2", 1, "q", 4, {})
    assert base != caches.retrieval_key("c", "u1", 1, "q", 5, {})
    assert base != caches.retrieval_key("c", "u1", 1, "q", 4, {"lang": "en"})
    other_model = RagCaches(MemoryCache(8), CacheConfig(key_prefix="p:"), "m:none")
    assert base != other_model.retrieval_key("c", "u1", 1, "q", 4, {})
