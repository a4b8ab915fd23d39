"""GET /v1/models and /v1/models/{id}: the models the healthy engines serve, and the
embedding model of /v1/embeddings, each saying which kind it is and when it was loaded."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway.accounting import RequestContext
from gateway.api.http import gateway_of, opens, respond
from gateway.engines.pool import EnginePool
from gateway.errors import model_not_found
from services.rag.client import RagClient
from services.rag.results import ModelCard

log = logging.getLogger(__name__)
router = APIRouter()


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(..., description="Unix time at which its engine loaded the model")
    owned_by: str = "tessera"
    kind: Literal["generation", "embedding"] = Field(
        ..., description="generation: chat and completions; embedding: /v1/embeddings"
    )
    max_model_len: int = Field(..., description="context length (an embedder's input limit)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ModelCatalog:
    """What /v1/models lists: the engines' models and the RAG service's embedder."""

    def __init__(self, pool: EnginePool, rag: RagClient | None) -> None:
        self.pool = pool
        self.rag = rag
        self._embedder: ModelCard | None = None  # asked once the RAG service answers

    async def models(self) -> ModelList:
        served = self.pool.models()
        data = [
            Model(id=m, created=i.created, kind="generation", max_model_len=i.max_model_len)
            for m, i in sorted(served.items())
        ]
        card = await self._embedding_model()
        if card is not None and card.id not in served:
            data.append(
                Model(
                    id=card.id,
                    created=card.created,
                    kind="embedding",
                    max_model_len=card.max_input_tokens,
                )
            )
        return ModelList(data=data)

    async def model(self, model_id: str) -> Model:
        for m in (await self.models()).data:
            if m.id == model_id:
                return m
        raise model_not_found(model_id)

    async def _embedding_model(self) -> ModelCard | None:
        if self._embedder is None and self.rag is not None:
            try:
                self._embedder = await self.rag.model_card()
            except Exception as e:  # the sidecar is down or loading: listed once it answers
                log.info("embedding model not listed yet: %s: %s", type(e).__name__, e)
        return self._embedder


@router.get("/v1/models", response_model=ModelList)
async def list_models(
    request: Request,
    ctx: RequestContext = Depends(opens("models")),  # noqa: B008 (FastAPI's idiom)
) -> Response:
    """The models served: the healthy engines' and the embedding model."""
    return await respond(request, ctx, gateway_of(request).catalog.models())


@router.get("/v1/models/{model_id:path}", response_model=Model)
async def get_model(
    model_id: str,
    request: Request,
    ctx: RequestContext = Depends(opens("models")),  # noqa: B008 (FastAPI's idiom)
) -> Response:
    """One model."""
    return await respond(request, ctx, gateway_of(request).catalog.model(model_id))
