"""Admission: whether a generation may start now (draining, the in-flight bound, the
caller's rate limits), and charging the tokens it used afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.auth import Principal
from gateway.errors import APIError, overloaded
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter


class Admission:
    """Counts generations in flight at this gateway and asks the rate limiter."""

    def __init__(self, limiter: RateLimiter, max_inflight: int, metrics: GatewayMetrics) -> None:
        self.limiter = limiter
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.accepting = True
        self.inflight = 0

    async def admit(self, principal: Principal, estimated_tokens: int) -> Callable[[], None]:
        """Reserve a slot (503 while draining, 429 when full or over a limit); returns the
        call that releases it, safe to call more than once."""
        if not self.accepting:
            raise overloaded("the gateway is shutting down; retry on another replica", 1.0, 503)
        if self.inflight >= self.max_inflight:
            self.metrics.rate_limited.labels("inflight").inc()
            raise overloaded("too many requests in flight at this gateway; retry shortly", 1.0)
        decision = await self.limiter.admit(principal, estimated_tokens)
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
        self._add(1)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._add(-1)

        return release

    async def charge(self, principal: Principal, tokens: int) -> None:
        """Add the tokens a generation used to its key's budget."""
        await self.limiter.charge(principal, tokens)

    async def drain(self, timeout: float) -> None:
        """Refuse new generations, wait for those in flight (up to timeout)."""
        self.accepting = False
        t_end = time.monotonic() + timeout
        while self.inflight and time.monotonic() < t_end:
            await asyncio.sleep(0.05)

    def _add(self, delta: int) -> None:
        self.inflight += delta
        self.metrics.inflight.set(self.inflight)
