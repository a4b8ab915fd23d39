"""POST /v1/embeddings: OpenAI's embeddings API over the sidecar's embedder."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from services.rag.errors import InvalidInputError, ModelNotFoundError
from services.rag.service import RagService

MAX_INPUTS = 2048
router = APIRouter()


class EmbeddingsRequest(BaseModel):
    """OpenAI's request shape; token-id inputs are refused (they belong to another tokenizer)."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] | list[int] | list[list[int]]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def accepted_models(service: RagService) -> set[str]:
    name = service.model_name
    return {name, f"sentence-transformers/{name}"}


def _texts(req: EmbeddingsRequest) -> list[str]:
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise InvalidInputError("'input' must not be empty", "input")
    if len(texts) > MAX_INPUTS:
        raise InvalidInputError(f"'input' may hold at most {MAX_INPUTS} items", "input")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidInputError(
            "token-id input is not supported by this model; send strings", "input"
        )
    if any(not t for t in texts):
        raise InvalidInputError("'input' must not contain empty strings", "input")
    return [str(t) for t in texts]


@router.post("/v1/embeddings")
async def create_embeddings(req: EmbeddingsRequest, request: Request) -> dict[str, Any]:
    service: RagService = request.app.state.service
    if req.model not in accepted_models(service):
        raise ModelNotFoundError(
            f"the model '{req.model}' does not exist; this server embeds with "
            f"'{service.model_name}'",
            "model",
        )
    dim = service.embedder.dimension
    if req.dimensions is not None and req.dimensions != dim:
        raise InvalidInputError(
            f"this model's embeddings have {dim} dimensions; 'dimensions' cannot change that",
            "dimensions",
        )
    result = await service.embed(_texts(req))
    data = []
    for i, vector in enumerate(result.vectors):
        embedding: list[float] | str = vector
        if req.encoding_format == "base64":
            embedding = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The embedding model this sidecar serves (OpenAI's list shape plus its kind)."""
    card = request.app.state.service.model_card()
    model = {
        "id": card.id,
        "object": "model",
        "created": card.created,
        "owned_by": "tessera",
        "kind": "embedding",
        "max_model_len": card.max_input_tokens,
        "dimension": card.dimension,
    }
    return {"object": "list", "data": [model]}
