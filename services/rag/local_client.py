"""The RAG Protocol served by a RagService of this process (embedded `tessera serve`)."""

from __future__ import annotations

from typing import Any

from services.rag.documents import Document
from services.rag.results import Chunk, Embeddings, Filters, IngestResult, ModelCard
from services.rag.service import RagService


class InProcessRagClient:
    """Direct calls into a RagService of this process (no serialisation, no network)."""

    def __init__(self, service: RagService) -> None:
        self.service = service

    async def retrieve(
        self,
        collection: str,
        query: str,
        top_k: int = 4,
        filters: Filters | None = None,
        request_id: str | None = None,
    ) -> list[Chunk]:
        return (await self.service.retrieve(collection, query, top_k, filters)).chunks

    async def embed(self, texts: list[str]) -> Embeddings:
        return await self.service.embed(texts)

    async def model_card(self) -> ModelCard:
        return self.service.model_card()

    async def create_collection(self, name: str, metadata: dict[str, Any] | None = None) -> None:
        await self.service.create_collection(name, metadata)

    async def ingest(self, collection: str, documents: list[Document]) -> IngestResult:
        return await self.service.ingest(collection, documents)

    async def delete_document(self, collection: str, document_id: str) -> int:
        return (await self.service.delete_document(collection, document_id))[0]

    async def delete_collection(self, name: str) -> None:
        await self.service.delete_collection(name)

    async def close(self) -> None:
        """The service belongs to whoever made it; nothing to release here."""
