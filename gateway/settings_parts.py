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

    enabled: bool = Field(
        True,
        description="cache deterministic responses",
        json_schema_extra={"flag": "response_cache"},
    )
    ttl: float = Field(
        3600.0,
        gt=0,
        description="seconds a cached response lives",
        json_schema_extra={"flag": "response_cache_ttl"},
    )
    max_memory_entries: int = Field(
        4096,
        ge=1,
        description="entries kept by the in-memory cache (no Redis)",
        json_schema_extra={"flag": "response_cache_entries"},
    )


class SemanticCacheConfig(BaseModel):
    """Answers reused for similar conversations (needs the RAG embedder); off by default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="reuse answers of similar conversations",
        json_schema_extra={"flag": "semantic_cache"},
    )
    threshold: float = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="cosine similarity at or above which an answer is reused",
        json_schema_extra={"flag": "semantic_cache_threshold"},
    )
    ttl: float = Field(
        3600.0,
        gt=0,
        description="seconds an answer stays reusable",
        json_schema_extra={"flag": "semantic_cache_ttl"},
    )
    max_entries: int = Field(
        256,
        ge=1,
        description="answers kept per key, model and route",
        json_schema_extra={"flag": "semantic_cache_entries"},
    )


class RagLinkConfig(BaseModel):
    """Where the gateway finds the RAG sidecar (retrieval, embeddings, semantic cache)."""

    model_config = ConfigDict(extra="forbid")

    rag_url: str | None = Field(
        None, description="RAG sidecar base URL, e.g. http://rag:8002 (none: no retrieval)"
    )
    rag_timeout: float = Field(30.0, gt=0, description="seconds a RAG call may take")


class EmbeddedRagConfig(BaseModel):
    """The RAG service `tessera serve` runs in-process (its HTTP API on its own port)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True, description="run the RAG service in-process", json_schema_extra={"flag": "rag"}
    )
    port: int = Field(
        8002,
        ge=0,
        le=65535,
        description="port of the RAG HTTP API (collections, ingest)",
        json_schema_extra={"flag": "rag_port"},
    )
    data_dir: Path | None = Field(
        None,
        description="where collections persist (default: the RAG service's own)",
        json_schema_extra={"flag": "rag_data_dir"},
    )


class RedisConfig(BaseModel):
    """Where caches and rate-limit state live; none = in-process memory."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description="redis://host:port/db; default $REDIS_URL, else in-memory state",
        json_schema_extra={"flag": "redis_url"},
    )
    socket_timeout: float = Field(
        0.25,
        gt=0,
        description="seconds before a Redis call counts as failed (never stalls)",
        json_schema_extra={"flag": "redis_timeout"},
    )
    key_prefix: str = Field(
        "tessera:",
        description="prefix of every key the gateway writes",
        json_schema_extra={"flag": "redis_key_prefix"},
    )

    @model_validator(mode="before")
    @classmethod
    def _default_from_env(cls, data: object) -> object:
        # REDIS_URL is the conventional variable (compose, Helm); explicit settings win.
        if isinstance(data, dict) and "url" not in data and os.environ.get("REDIS_URL"):
            return {**data, "url": os.environ["REDIS_URL"]}
        return data
