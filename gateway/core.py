"""The gateway's parts wired together once: engines, keys, accounting, admission, caches,
handlers, metrics.

Nothing here handles a request: the REST and gRPC fronts open every call through
``accounting``, hand it to an endpoint's handler, and the handlers' shared Generation
pipeline passes it through ``admission`` and ``caches`` to the engine pool.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

import tessera
from engine.api.grpc_client import GrpcEngineClient
from gateway.accounting import Accounting
from gateway.admission import Admission
from gateway.api.chat import ChatHandler
from gateway.api.completions import CompletionHandler
from gateway.api.generation import Generation, Pipeline
from gateway.api.models import ModelCatalog
from gateway.api.tokenize import Tokenization
from gateway.auth import APIKeyStore
from gateway.caching import Caches
from gateway.config import GatewayConfig
from gateway.engines.pool import EnginePool, PoolSettings
from gateway.engines.routing import create_policy
from gateway.metrics import GatewayMetrics
from gateway.rag import Retrieval
from gateway.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from gateway.redis_state import RedisHealth
from gateway.response_cache import MemoryResponseCache, RedisResponseCache, ResponseCache
from gateway.semantic_cache import (
    MemorySemanticStore,
    RedisSemanticStore,
    SemanticCache,
    SemanticStore,
)
from services.rag.client import HttpRagClient, RagClient
from services.rag.model_files import MODEL_NAME as EMBEDDING_MODEL

log = logging.getLogger(__name__)


class Gateway:
    """Owns the shared state of one gateway process (or of the embedded stack)."""

    def __init__(
        self,
        config: GatewayConfig,
        pool: EnginePool | None = None,
        rag: RagClient | None = None,
        embedding_model: str | None = None,
    ) -> None:
        self.config = config
        self.version = tessera.__version__
        self.registry = CollectorRegistry()
        r = config.routing
        ca = r.engine_tls_ca.read_bytes() if r.engine_tls_ca is not None else None
        self.pool = pool or EnginePool(
            PoolSettings(tuple(r.engines), r.dns, r.health_interval),
            create_policy(r.policy.value),
            lambda target: GrpcEngineClient(target, tls_ca=ca),
        )
        self.metrics = GatewayMetrics(self.registry, self._engine_counts)
        self.pool.on_failure = lambda kind: self.metrics.upstream_errors.labels(kind).inc()
        self.keys = APIKeyStore.from_config(config.auth)
        self.accounting = Accounting(self.keys, self.metrics)
        self.redis_health = RedisHealth(on_error=self.metrics.redis_errors.inc)
        self.redis = self._redis_client()
        self.admission = Admission(self._limiter(), config.http.max_inflight, self.metrics)
        if rag is None and config.rag.rag_url:
            http_rag = HttpRagClient(config.rag.rag_url, config.rag.rag_timeout)
            rag, embedding_model = http_rag, http_rag.model
        self.rag = rag
        self.embedding_model = embedding_model or EMBEDDING_MODEL
        self.caches = Caches(
            self._response_cache(),
            config.response_cache,
            self._semantic_cache(),
            self._model_version,
            self.metrics,
        )
        generation = Generation(
            Pipeline(
                self.pool,
                self.admission,
                self.caches,
                self.metrics,
                Retrieval(rag, self.pool.require_model) if rag else None,
                config.http.request_timeout,
            )
        )
        self.chat = ChatHandler(generation)
        self.completions = CompletionHandler(generation)
        self.catalog = ModelCatalog(self.pool, rag)
        self.tokenization = Tokenization(self.pool)

    # ---- wiring ----------------------------------------------------------------------
    def _redis_client(self) -> Any:
        url = self.config.redis.url
        if not url:
            return None
        import redis.asyncio as aioredis

        t = self.config.redis.socket_timeout
        return aioredis.from_url(url, socket_timeout=t, socket_connect_timeout=t)

    def _limiter(self) -> RateLimiter:
        c = self.config
        if self.redis is None:
            return MemoryRateLimiter(c.limits)
        return RedisRateLimiter(self.redis, c.limits, self.redis_health, c.redis.key_prefix)

    def _response_cache(self) -> ResponseCache:
        if self.redis is None:
            return MemoryResponseCache(self.config.response_cache.max_memory_entries)
        return RedisResponseCache(self.redis, self.redis_health, self.config.redis.key_prefix)

    def _semantic_cache(self) -> SemanticCache | None:
        sc = self.config.semantic_cache
        if not sc.enabled:
            return None
        rag = self.rag
        if rag is None:
            raise ValueError("the semantic cache needs the RAG service's embedder (--rag-url)")
        store: SemanticStore = (
            RedisSemanticStore(
                self.redis, self.redis_health, self.config.redis.key_prefix, sc.max_entries
            )
            if self.redis is not None
            else MemorySemanticStore(sc.max_entries)
        )

        async def embed(texts: list[str]) -> list[list[float]]:
            return (await rag.embed(texts)).vectors

        return SemanticCache(embed, store, sc.threshold, sc.ttl)

    def _engine_counts(self) -> tuple[int, int]:
        return len(self.pool.healthy()), len(self.pool.endpoints)

    def _model_version(self, model: str) -> str:
        for e in self.pool.healthy(model):
            if e.info is not None:
                return f"{e.info.model}|{e.info.backend}|{e.info.quantization}"
        return model

    # ---- lifecycle -------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        """False once draining began."""
        return self.admission.accepting

    async def start(self) -> None:
        if self.keys.is_open:
            log.warning(APIKeyStore.OPEN_WARNING)
        await self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
        if self.rag is not None:
            await self.rag.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def drain(self, timeout: float) -> None:
        """Refuse new generations, wait for those in flight (up to timeout)."""
        await self.admission.drain(timeout)
