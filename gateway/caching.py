"""The caches in front of the engines: exact responses (deterministic requests only) and,
for chats, the semantic cache (a close enough earlier conversation's answer)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.accounting import RequestContext
from gateway.metrics import GatewayMetrics
from gateway.response_cache import ResponseCache, cache_key, is_cacheable
from gateway.semantic_cache import SemanticCache, conversation_text, scope_key
from gateway.settings_parts import ResponseCacheConfig

if TYPE_CHECKING:
    from gateway.api.generation import GenerationRequest

log = logging.getLogger(__name__)


class Caches:
    """Looks a generation up before it runs and stores it once it finished complete."""

    def __init__(
        self,
        responses: ResponseCache,
        config: ResponseCacheConfig,
        semantic: SemanticCache | None,
        model_version: Callable[[str], str],
        metrics: GatewayMetrics,
    ) -> None:
        self.responses = responses
        self.config = config
        self.semantic = semantic
        self._model_version = model_version  # model -> "name|backend|quantization"
        self.metrics = metrics

    def _key(self, ctx: RequestContext, request: GenerationRequest) -> str | None:
        body = request.cache_body
        if not self.config.enabled or body is None or not is_cacheable(body):
            return None
        if ctx.bypass_cache:
            ctx.cache_status = "bypass"
            return None
        version = self._model_version(request.model)
        return cache_key(ctx.principal.key_id, version, request.route, body)

    async def get(self, ctx: RequestContext, request: GenerationRequest) -> dict[str, Any] | None:
        """A stored result for this GenerationRequest, or None (ctx.cache_status says why)."""
        key = self._key(ctx, request)
        if key is not None:
            hit = await self.responses.get(key)
            ctx.cache_status = "hit" if hit is not None else "miss"
            self.metrics.cache.labels("response", ctx.cache_status).inc()
            if hit is not None:
                return hit
        return await self._semantic_get(ctx, request)

    async def _semantic_get(
        self, ctx: RequestContext, request: GenerationRequest
    ) -> dict[str, Any] | None:
        messages = request.semantic_messages
        if self.semantic is None or ctx.bypass_cache or not messages or request.rag is not None:
            return None
        version = self._model_version(request.model)
        scope = scope_key(ctx.principal.key_id, version, request.route, str(request.params.n))
        try:
            vector = await self.semantic.vector(conversation_text(messages))
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

    async def put(
        self, ctx: RequestContext, request: GenerationRequest, result: dict[str, Any]
    ) -> None:
        """Store a complete result where the lookup missed."""
        if ctx.cache_status == "miss":
            key = self._key(ctx, request)
            if key is not None:
                await self.responses.put(key, result, self.config.ttl)
        if self.semantic is not None and ctx.semantic is not None:
            await self.semantic.add(*ctx.semantic, result)
