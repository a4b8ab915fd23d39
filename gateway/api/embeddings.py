"""POST /v1/embeddings: OpenAI's embeddings API over the RAG service's embedder."""

from __future__ import annotations

import base64
import struct
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway.accounting import RequestContext
from gateway.api.common import StrictModel
from gateway.api.http import gateway_of, opens, respond
from gateway.errors import APIError, bad_request, unsupported
from gateway.rag import rag_error
from services.rag.client import RagClient
from services.rag.errors import RagError

router = APIRouter()


class EmbeddingRequest(StrictModel):
    """OpenAI's embeddings request (text input only)."""

    input: str | list[str] = Field(..., description="text or texts to embed")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    dimensions: int | None = Field(None, description="not supported: the model's own size")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


MAX_INPUTS = 2048


async def create_embeddings(
    client: RagClient | None, model: str, req: EmbeddingRequest
) -> EmbeddingList:
    """Embed through the RAG service; 404 for another model, 400 for bad input."""
    if client is None:
        raise unsupported("model", "embeddings (no RAG service is configured)")
    if req.model != model:
        raise APIError(
            404,
            f"The model `{req.model}` does not exist; embeddings use `{model}`.",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    if req.dimensions is not None:
        raise unsupported("dimensions", "dimensions")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or len(texts) > MAX_INPUTS or any(not t for t in texts):
        raise bad_request(f"input must be 1 to {MAX_INPUTS} non-empty strings", "input")
    try:
        result = await client.embed(texts)
    except RagError as e:
        raise rag_error(e, "input") from e
    data = []
    for i, v in enumerate(result.vectors):
        value: list[float] | str = v
        if req.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        data.append(Embedding(index=i, embedding=value))
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingList(data=data, model=model, usage=usage)


@router.post("/v1/embeddings", response_model=EmbeddingList)
async def embeddings(
    body: EmbeddingRequest,
    request: Request,
    ctx: RequestContext = Depends(opens("embeddings")),  # noqa: B008 (FastAPI's idiom)
) -> Response:
    """Embeddings from the RAG service's embedder (all-MiniLM-L6-v2, INT8 on CPU)."""
    gw = gateway_of(request)
    return await respond(request, ctx, create_embeddings(gw.rag, gw.embedding_model, body))
