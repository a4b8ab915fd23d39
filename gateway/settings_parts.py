"""Settings of the gateway's keys, limits, response cache and Redis (composed in config.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AuthConfig(BaseModel):
    """API keys. None configured = open (a warning at start-up)."""

    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(
        default_factory=list,
        description="plaintext keys (hashed at load, never kept or logged); prefer --keys-file",
    )
    keys_file: Path | None = Field(
        None,
        description='JSON list of {"name", "sha256", "rpm", "tpm"}; make entries with '
        "`tessera keys new`",
    )


class RateLimitConfig(BaseModel):
    """Per-key limits, shared by gateway replicas through Redis."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, description="default requests per minute per key")
    tpm: int | None = Field(None, ge=1, description="default tokens per minute per key")
    failure_mode: Literal["open", "closed"] = Field(
        "open", description="when Redis is down: open = allow, closed = refuse with 429"
    )


class ResponseCacheConfig(BaseModel):
    """Exact-match cache of deterministic responses (temperature 0 or a seed)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="cache deterministic responses")
    ttl: float = Field(3600.0, gt=0, description="seconds a cached response lives")
    max_memory_entries: int = Field(
        4096, ge=1, description="entries kept by the in-memory cache (no Redis)"
    )


class RedisConfig(BaseModel):
    """Where caches and rate-limit state live; none = in-process memory."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None, description="redis://host:port/db; default $REDIS_URL, else in-memory state"
    )
    socket_timeout: float = Field(
        0.25, gt=0, description="seconds before a Redis call counts as failed (never stalls)"
    )
    key_prefix: str = Field("tessera:", description="prefix of every key the gateway writes")

    @model_validator(mode="before")
    @classmethod
    def _default_from_env(cls, data: object) -> object:
        # REDIS_URL is the conventional variable (compose, Helm); explicit settings win.
        if isinstance(data, dict) and "url" not in data and os.environ.get("REDIS_URL"):
            return {**data, "url": os.environ["REDIS_URL"]}
        return data
