"""The gateway's parts wired together once: engines, handlers, keys, limits, caches, metrics.

The REST and gRPC fronts only translate wire formats; everything a request goes
through (authentication, admission, cache, routing, accounting) happens here or in
the handlers, so both fronts behave the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

import tessera
from engine.api.grpc_client import GrpcEngineClient
from gateway.api.chat import ChatHandler
from gateway.api.common import SamplingFields
from gateway.api.completions import CompletionHandler
from gateway.api.generation import Generation, GenerationResult, RequestContext, Retriever
from gateway.auth import APIKeyStore, Principal, parse_api_key
from gateway.config import GatewayConfig
from gateway.engines.pool import EnginePool, PoolSettings
from gateway.engines.routing import create_policy
from gateway.errors import APIError, overloaded
from gateway.metrics import GatewayMetrics
from gateway.rag import Retrieval
from gateway.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from gateway.redis_state import RedisHealth
from gateway.response_cache import (
    MemoryResponseCache,
    RedisResponseCache,
    ResponseCache,
    cache_key,
    is_cacheable,
)
from gateway.semantic_cache import (
    MemorySemanticStore,
    RedisSemanticStore,
    SemanticCache,
    SemanticStore,
    conversation_text,
    scope_key,
)
from services.rag.client import HttpRagClient, RagClient
from services.rag.model_files import MODEL_NAME as EMBEDDING_MODEL

log = logging.getLogger(__name__)

CACHE_FIELDS_DROPPED = ("stream", "stream_options", "user")


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
        self.redis_health = RedisHealth(on_error=self.metrics.redis_errors.inc)
        self.redis = self._redis_client()
        self.limiter: RateLimiter = (
            RedisRateLimiter(self.redis, config.limits, self.redis_health, config.redis.key_prefix)
            if self.redis is not None
            else MemoryRateLimiter(config.limits)
        )
        self.cache: ResponseCache = (
            RedisResponseCache(self.redis, self.redis_health, config.redis.key_prefix)
            if self.redis is not None
            else MemoryResponseCache(config.response_cache.max_memory_entries)
        )
        self._inflight = 0
        self.accepting = True
        if rag is None and config.rag.rag_url:
            http_rag = HttpRagClient(config.rag.rag_url, config.rag.rag_timeout)
            rag, embedding_model = http_rag, http_rag.model
        self.rag = rag
        self.embedding_model = embedding_model or EMBEDDING_MODEL
        retriever: Retriever | None = Retrieval(rag, self.pool.require_model) if rag else None
        self.semantic: SemanticCache | None = None
        sc = config.semantic_cache
        if sc.enabled:
            if rag is None:
                raise ValueError("the semantic cache needs the RAG service's embedder (--rag-url)")
            store: SemanticStore = (
                RedisSemanticStore(
                    self.redis, self.redis_health, config.redis.key_prefix, sc.max_entries
                )
                if self.redis is not None
                else MemorySemanticStore(sc.max_entries)
            )
            embed_client = rag

            async def embed(texts: list[str]) -> list[list[float]]:
                return (await embed_client.embed(texts)).vectors

            self.semantic = SemanticCache(embed, store, sc.threshold, sc.ttl)
        generation = Generation(self.pool, self, retriever, config.http.request_timeout)
        self.chat = ChatHandler(generation)
        self.completions = CompletionHandler(generation)

    def _redis_client(self) -> Any:
        url = self.config.redis.url
        if not url:
            return None
        import redis.asyncio as aioredis

        t = self.config.redis.socket_timeout
        return aioredis.from_url(url, socket_timeout=t, socket_connect_timeout=t)

    def _engine_counts(self) -> tuple[int, int]:
        return len(self.pool.healthy()), len(self.pool.endpoints)

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
        self.accepting = False
        t_end = time.monotonic() + timeout
        while self._inflight and time.monotonic() < t_end:
            await asyncio.sleep(0.05)

    # ---- authentication ------------------------------------------------------------
    def authenticate(self, authorization: str | None, api_key: str | None = None) -> Principal:
        """The caller's principal, or a 401 in OpenAI's shape."""
        presented = parse_api_key(authorization, api_key)
        principal = self.keys.authenticate(presented)
        if principal is None:
            self.metrics.auth_failures.inc()
            raise APIError(
                401,
                "Incorrect API key provided."
                if presented
                else "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )
        return principal

    # ---- Hooks (gateway.api.generation) ----------------------------------------------
    async def admit(self, ctx: RequestContext, req: SamplingFields) -> Callable[[], None]:
        if not self.accepting:
            raise overloaded("the gateway is shutting down; retry on another replica", 1.0, 503)
        if self._inflight >= self.config.http.max_inflight:
            self.metrics.rate_limited.labels("inflight").inc()
            raise overloaded("too many requests in flight at this gateway; retry shortly", 1.0)
        estimate = (req.max_tokens or 16) * req.n
        decision = await self.limiter.admit(ctx.principal, estimate)
        if not decision.allowed:
            self.metrics.rate_limited.labels(decision.limit or "rpm").inc()
            raise APIError(
                429,
                f"Rate limit reached for {decision.limit or 'requests'} on this "
                "API key; retry after the indicated time.",
                "rate_limit_error",
                None,
                "rate_limit_exceeded",
                max(decision.retry_after, 0.001),
            )
        self._inflight += 1
        self.metrics.inflight.set(self._inflight)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._inflight -= 1
                self.metrics.inflight.set(self._inflight)

        return release

    async def charge(self, ctx: RequestContext, tokens: int) -> None:
        await self.limiter.charge(ctx.principal, tokens)

    def _cache_key(self, ctx: RequestContext, route: str, req: BaseModel) -> str | None:
        if not self.config.response_cache.enabled:
            return None
        body = req.model_dump(mode="json", exclude=set(CACHE_FIELDS_DROPPED))
        if not is_cacheable(body):
            return None
        if ctx.bypass_cache:
            ctx.cache_status = "bypass"
            return None
        model = getattr(req, "model", "")
        return cache_key(ctx.principal.key_id, self._model_version(model), route, body)

    def _model_version(self, model: str) -> str:
        for e in self.pool.healthy(model):
            if e.info is not None:
                return f"{e.info.model}|{e.info.backend}|{e.info.quantization}"
        return model

    async def cache_get(
        self, ctx: RequestContext, route: str, req: BaseModel
    ) -> dict[str, Any] | None:
        key = self._cache_key(ctx, route, req)
        if key is not None:
            hit = await self.cache.get(key)
            ctx.cache_status = "hit" if hit is not None else "miss"
            self.metrics.cache.labels("response", ctx.cache_status).inc()
            if hit is not None:
                return hit
        return await self._semantic_get(ctx, route, req)

    async def _semantic_get(
        self, ctx: RequestContext, route: str, req: BaseModel
    ) -> dict[str, Any] | None:
        messages = getattr(req, "messages", None)
        if self.semantic is None or ctx.bypass_cache or not messages or getattr(req, "rag", None):
            return None
        text = conversation_text(req.engine_messages())  # type: ignore[attr-defined]
        model_version = self._model_version(getattr(req, "model", ""))
        scope = scope_key(ctx.principal.key_id, model_version, route, str(getattr(req, "n", 1)))
        try:
            vector = await self.semantic.vector(text)
        except Exception as e:  # the embedder is an optimisation here, never a failure
            log.warning("semantic cache skipped: %s", type(e).__name__)
            return None
        hit, _ = await self.semantic.lookup(scope, vector)
        self.metrics.cache.labels("semantic", "hit" if hit is not None else "miss").inc()
        if hit is not None:
            ctx.cache_status = "semantic-hit"
            return hit
        ctx.semantic = (scope, vector)
        return None

    async def cache_put(
        self, ctx: RequestContext, route: str, req: BaseModel, result: dict[str, Any]
    ) -> None:
        if ctx.cache_status == "miss":
            key = self._cache_key(ctx, route, req)
            if key is not None:
                await self.cache.put(key, result, self.config.response_cache.ttl)
        if self.semantic is not None and ctx.semantic is not None:
            await self.semantic.add(*ctx.semantic, result)

    def observe(
        self, ctx: RequestContext, route: str, result: GenerationResult | None, ttft: float | None
    ) -> None:
        if ttft is not None:
            self.metrics.ttft.labels(route).observe(ttft)
            self.metrics.observe_stages(ctx.stages)
        if result is not None and ctx.cache_status not in ("hit", "semantic-hit"):
            self.metrics.prompt_tokens.inc(result.usage.prompt_tokens)
            self.metrics.generation_tokens.inc(result.usage.completion_tokens)
