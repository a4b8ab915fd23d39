"""RAG sidecar settings: one pydantic-settings root composed of one model per concern.

Every leaf field is a CLI flag (``--chunk-size``; see tessera.cli_args) and an
environment variable (``TESSERA_RAG_CHUNKING__CHUNK_SIZE``); flags win over the
environment, which wins over the defaults documented here. ``REDIS_URL`` is read
as the default Redis location, as the gateway does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerConfig(BaseModel):
    """The sidecar's HTTP side and its shutdown."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("0.0.0.0", description="address the HTTP server binds")
    port: int = Field(8002, ge=0, le=65535, description="HTTP port (0 picks a free one)")
    drain_timeout: float = Field(
        30.0, ge=0, description="seconds in-flight requests get to finish after SIGTERM"
    )
    max_request_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="largest request body accepted"
    )


class EmbedderConfig(BaseModel):
    """Which embedding model runs, at what precision, on how many threads."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: Literal["onnx"] = Field(
        "onnx", description="embedder implementation", json_schema_extra={"flag": "embedder"}
    )
    quantization: Literal["int8", "none"] = Field(
        "int8",
        description="int8: per-token INT8 activations x per-channel INT8 weights; none: float32",
    )
    int8_scheme: Literal["per_token", "ort_dynamic"] = Field(
        "per_token",
        description="per_token: Tessera's pass (per-token activation scales, passes the 0.99 "
        "cosine gate); ort_dynamic: onnxruntime quantize_dynamic (per-tensor activations)",
    )
    model_dir: Path | None = Field(
        None, description="directory with model.safetensors + tokenizer.json (default: bundled)"
    )
    cache_dir: Path | None = Field(
        None, description="where compiled ONNX artifacts are cached (default ~/.cache/tessera/rag)"
    )
    max_seq_length: int = Field(
        256, ge=8, le=512, description="tokens per input; longer inputs are truncated"
    )
    num_threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads")


class BatchingConfig(BaseModel):
    """Dynamic batching of concurrent embedding calls (as Triton's dynamic batcher)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(64, ge=1, description="most texts embedded in one model call")
    max_queue_delay_ms: float = Field(
        2.0, ge=0, description="how long the first queued text waits for company"
    )


class ChunkingConfig(BaseModel):
    """How documents are cut into chunks before embedding."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(128, ge=16, le=510, description="tokens per chunk")
    chunk_overlap: int = Field(32, ge=0, description="tokens shared by neighbouring chunks")

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, v: int, info: ValidationInfo) -> int:
        if v >= info.data.get("chunk_size", v + 1):
            raise ValueError("must be smaller than --chunk-size")
        return v


class IndexConfig(BaseModel):
    """FAISS index per collection and where collections persist."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(
        Path("~/.local/share/tessera/rag"), description="directory of the collections on disk"
    )
    approximate_threshold: int = Field(
        50_000, ge=1, description="live chunks past which a collection switches to HNSW"
    )
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW graph degree")
    hnsw_ef_construction: int = Field(80, ge=8, description="HNSW build-time beam width")
    hnsw_ef_search: int = Field(96, ge=8, description="HNSW query-time beam width")
    compact_segments: int = Field(
        32, ge=1, description="segments on disk after a snapshot before it is rewritten"
    )


class CacheConfig(BaseModel):
    """Query-embedding and retrieval-result caches (Redis, else in-process memory)."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str | None = Field(
        None,
        description="redis://host:port/db; default $REDIS_URL, else (or when empty) in-memory",
    )
    key_prefix: str = Field("tessera:rag:", description="prefix of every key the sidecar writes")
    embedding_ttl: float = Field(
        86400.0, gt=0, description="seconds a cached query embedding lives"
    )
    retrieval_ttl: float = Field(600.0, gt=0, description="seconds a cached retrieval result lives")
    socket_timeout: float = Field(
        0.25, gt=0, description="seconds before a Redis call counts as a miss (never stalls)"
    )
    max_memory_entries: int = Field(
        16384, ge=1, description="entries kept by the in-memory cache (no Redis)"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_from_env(cls, data: object) -> object:
        # REDIS_URL is the conventional variable (compose, Helm); explicit settings win.
        if isinstance(data, dict) and "redis_url" not in data and os.environ.get("REDIS_URL"):
            return {**data, "redis_url": os.environ["REDIS_URL"]}
        return data


class RagConfig(BaseSettings):
    """Root of the RAG sidecar's settings (`tessera rag`, and the RAG part of `serve`)."""

    model_config = SettingsConfigDict(
        env_prefix="TESSERA_RAG_", env_nested_delimiter="__", extra="forbid"
    )

    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    embedder: EmbedderConfig = Field(default_factory=lambda: EmbedderConfig())
    batching: BatchingConfig = Field(default_factory=lambda: BatchingConfig())
    chunking: ChunkingConfig = Field(default_factory=lambda: ChunkingConfig())
    index: IndexConfig = Field(default_factory=lambda: IndexConfig())
    cache: CacheConfig = Field(default_factory=lambda: CacheConfig())
