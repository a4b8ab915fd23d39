"""Per-key requests-per-minute and tokens-per-minute limits.

Fixed one-minute windows, counted atomically in Redis by one Lua script, so every
gateway replica shares one budget per key. A fixed window lets a key burst up to
twice its limit across a window boundary; in exchange each check is one round
trip and two small keys per key and minute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.auth import Principal
from gateway.redis_state import RedisHealth
from gateway.settings_parts import RateLimitConfig

WINDOW = 60.0

_ADMIT = """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= tpm then return {0, 2} end
end
if rpm > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  if n > rpm then return {0, 1} end
end
return {1, 0}
"""
_CHARGE = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0
    limit: str | None = None  # "rpm" or "tpm" when refused


class RateLimiter(Protocol):
    async def admit(self, principal: Principal, estimated_tokens: int) -> Decision:
        """Count one request against the key's RPM; refuse when RPM or TPM is spent."""

    async def charge(self, principal: Principal, tokens: int) -> None:
        """Add tokens a request used to the key's TPM window."""


def _limits(principal: Principal, config: RateLimitConfig) -> tuple[int, int]:
    rpm = principal.rpm if principal.rpm is not None else config.rpm
    tpm = principal.tpm if principal.tpm is not None else config.tpm
    return rpm or 0, tpm or 0


def _window(now: float) -> tuple[int, float]:
    """(window number, seconds until it ends)."""
    return int(now // WINDOW), WINDOW - (now % WINDOW)


class MemoryRateLimiter:
    """One process's limits (embedded mode without Redis)."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        self._counts: dict[tuple[str, str, int], int] = {}

    def _prune(self, current: int) -> None:
        if len(self._counts) > 10_000:
            self._counts = {k: v for k, v in self._counts.items() if k[2] >= current}

    async def admit(self, principal: Principal, estimated_tokens: int) -> Decision:
        rpm, tpm = _limits(principal, self.config)
        window, left = _window(time.time())
        self._prune(window)
        if tpm and self._counts.get((principal.key_id, "tpm", window), 0) >= tpm:
            return Decision(False, left, "tpm")
        if rpm:
            key = (principal.key_id, "rpm", window)
            self._counts[key] = self._counts.get(key, 0) + 1
            if self._counts[key] > rpm:
                return Decision(False, left, "rpm")
        return Decision(True)

    async def charge(self, principal: Principal, tokens: int) -> None:
        window, _ = _window(time.time())
        key = (principal.key_id, "tpm", window)
        self._counts[key] = self._counts.get(key, 0) + tokens


class RedisRateLimiter:
    """Limits in Redis, shared by replicas; degrades per ``failure_mode`` when Redis is down."""

    def __init__(
        self, redis: Any, config: RateLimitConfig, health: RedisHealth, prefix: str = "tessera:"
    ) -> None:
        self.redis, self.config, self.health = redis, config, health
        self.prefix = prefix + "rl:"
        self._admit = redis.register_script(_ADMIT)
        self._charge = redis.register_script(_CHARGE)

    def _keys(self, principal: Principal, window: int) -> list[str]:
        base = f"{self.prefix}{principal.key_id}:{window}"
        return [base + ":rpm", base + ":tpm"]

    async def admit(self, principal: Principal, estimated_tokens: int) -> Decision:
        rpm, tpm = _limits(principal, self.config)
        if not rpm and not tpm:
            return Decision(True)
        window, left = _window(time.time())
        ttl_ms = int((WINDOW + 5) * 1000)
        try:
            allowed, which = await self._admit(
                keys=self._keys(principal, window), args=[rpm, tpm, ttl_ms]
            )
        except Exception as e:  # never raise into the request path
            self.health.failed("rate limiting", e)
            if self.config.failure_mode == "closed":
                return Decision(False, 5.0, "unavailable")
            return Decision(True)
        self.health.succeeded()
        if allowed:
            return Decision(True)
        return Decision(False, left, "rpm" if which == 1 else "tpm")

    async def charge(self, principal: Principal, tokens: int) -> None:
        _, tpm = _limits(principal, self.config)
        if not tpm or tokens <= 0:
            return
        window, _ = _window(time.time())
        try:
            await self._charge(
                keys=[self._keys(principal, window)[1]], args=[tokens, int((WINDOW + 5) * 1000)]
            )
            self.health.succeeded()
        except Exception as e:
            self.health.failed("token accounting", e)
