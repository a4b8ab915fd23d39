"""Plain results the service returns and both clients hand to the gateway."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MetadataValue = str | int | float | bool
Filters = dict[str, MetadataValue | list[MetadataValue]]
"""Metadata equality filters of a retrieval: a value, or a list of accepted values."""


@dataclass(frozen=True)
class Chunk:
    """A retrieved chunk: where it comes from, its text, its score (cosine) and metadata."""

    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Chunk:
        return cls(
            document_id=str(obj["document_id"]),
            chunk_id=str(obj["chunk_id"]),
            text=str(obj["text"]),
            score=float(obj["score"]),
            metadata=dict(obj.get("metadata") or {}),
        )


@dataclass(frozen=True)
class Retrieval:
    """The chunks of one retrieve call and the collection version they came from."""

    collection: str
    version: int
    chunks: list[Chunk]
    cached: bool


@dataclass(frozen=True)
class IngestResult:
    """What one ingest call committed."""

    collection: str
    version: int
    documents: int
    chunks: int
    replaced: int  # documents that existed before and were replaced


@dataclass(frozen=True)
class Embeddings:
    """Vectors for texts, in order, and the tokens the model read."""

    vectors: list[list[float]]
    prompt_tokens: int
    model: str


@dataclass(frozen=True)
class ModelCard:
    """The embedding model the service serves, as /v1/models lists it."""

    id: str
    created: int
    """Unix time at which the service loaded the model."""
    max_input_tokens: int
    dimension: int
