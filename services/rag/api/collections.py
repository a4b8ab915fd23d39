"""Collections, their documents, and retrieval: /v1/collections/..."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.rag.collection import CollectionStats
from services.rag.documents import Document, MetadataValue, parse_jsonl, validate_document
from services.rag.errors import InvalidInputError
from services.rag.results import IngestResult
from services.rag.service import MAX_TOP_K, RagService

router = APIRouter(prefix="/v1/collections")
_UPLOAD_TYPES = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "application/jsonl": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/x-jsonlines": "jsonl",
}


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    format: Literal["text", "markdown"] = "text"
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1)
    chunk_size: int | None = Field(None, ge=16, le=510)
    chunk_overlap: int | None = Field(None, ge=0)


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    top_k: int = Field(4, ge=1, le=MAX_TOP_K)
    filters: dict[str, MetadataValue | list[MetadataValue]] | None = None


def _service(request: Request) -> RagService:
    service: RagService = request.app.state.service
    return service


def collection_json(stats: CollectionStats) -> dict[str, Any]:
    return {"id": stats.name, "object": "collection", **asdict(stats)}


def ingest_json(result: IngestResult) -> dict[str, Any]:
    return {"object": "ingest.result", **asdict(result)}


@router.post("", status_code=201)
async def create_collection(body: CreateCollection, request: Request) -> dict[str, Any]:
    return collection_json(await _service(request).create_collection(body.name, body.metadata))


@router.get("")
async def list_collections(request: Request) -> dict[str, Any]:
    stats = _service(request).list_collections()
    return {"object": "list", "data": [collection_json(s) for s in stats]}


@router.get("/{name}")
async def get_collection(name: str, request: Request) -> dict[str, Any]:
    return collection_json(_service(request).collection_stats(name))


@router.delete("/{name}")
async def delete_collection(name: str, request: Request) -> dict[str, Any]:
    await _service(request).delete_collection(name)
    return {"id": name, "object": "collection.deleted", "deleted": True}


@router.post("/{name}/documents")
async def ingest_documents(name: str, body: IngestRequest, request: Request) -> dict[str, Any]:
    docs = [Document(d.id, d.text, d.format, d.metadata) for d in body.documents]
    result = await _service(request).ingest(name, docs, body.chunk_size, body.chunk_overlap)
    return ingest_json(result)


@router.post("/{name}/files")
async def upload_file(
    name: str,
    request: Request,
    format: Literal["text", "markdown", "jsonl"] | None = None,
    id: str | None = None,
    metadata: str | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
) -> dict[str, Any]:
    """A raw body: one text or Markdown document (``?id=``), or JSON lines of documents."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = format or _UPLOAD_TYPES.get(content_type)
    if fmt is None:
        raise InvalidInputError(
            "say what the body is: ?format=text|markdown|jsonl or a Content-Type of "
            "text/plain, text/markdown or application/x-ndjson",
            "format",
        )
    try:
        body = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("the body is not UTF-8 text", "body") from None
    if fmt == "jsonl":
        docs = parse_jsonl(body)
    else:
        if not id:
            raise InvalidInputError("a text or Markdown upload needs ?id=<document id>", "id")
        docs = [validate_document(Document(id, body, fmt, _metadata(metadata)))]  # type: ignore[arg-type]
    result = await _service(request).ingest(name, docs, chunk_size, chunk_overlap)
    return ingest_json(result)


@router.delete("/{name}/documents/{document_id:path}")
async def delete_document(name: str, document_id: str, request: Request) -> dict[str, Any]:
    removed, version = await _service(request).delete_document(name, document_id)
    return {
        "id": document_id,
        "object": "document.deleted",
        "deleted": True,
        "chunks": removed,
        "version": version,
    }


@router.post("/{name}/retrieve")
async def retrieve(name: str, body: RetrieveRequest, request: Request) -> JSONResponse:
    result = await _service(request).retrieve(name, body.query, body.top_k, body.filters)
    return JSONResponse(
        {
            "object": "list",
            "collection": result.collection,
            "version": result.version,
            "cached": result.cached,
            "data": [c.to_dict() for c in result.chunks],
        }
    )


def _metadata(raw: str | None) -> dict[str, MetadataValue]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidInputError("?metadata= must be a JSON object", "metadata") from None
    if not isinstance(value, dict):
        raise InvalidInputError("?metadata= must be a JSON object", "metadata")
    return value
