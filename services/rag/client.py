"""The RAG sidecar's contract for its callers (torch- and FAISS-free): one Protocol and the
HTTP client of a remote sidecar.

``services.rag.local_client.InProcessRagClient`` serves the same Protocol from a RagService
in this process (embedded ``tessera serve``). Both return the same plain results and raise
the same typed errors (services.rag.errors): CollectionNotFoundError, InvalidInputError,
RagUnavailableError, and RagError for anything else.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

import httpx

from services.rag.documents import Document
from services.rag.errors import RagError, RagUnavailableError, error_from_body
from services.rag.model_files import MODEL_NAME
from services.rag.results import Chunk, Embeddings, Filters, IngestResult, ModelCard

REQUEST_ID_HEADER = "X-Request-Id"
"""The caller's request id, logged by the sidecar with its line for the request."""


class RagClient(Protocol):
    """What the gateway needs from RAG: retrieval for chat, embeddings for its API and cache."""

    async def retrieve(
        self,
        collection: str,
        query: str,
        top_k: int = 4,
        filters: Filters | None = None,
        request_id: str | None = None,
    ) -> list[Chunk]:
        """Best ``top_k`` chunks for ``query`` (score = cosine), metadata equality filters;
        ``request_id`` is the caller's, for the sidecar's log."""
        ...

    async def embed(self, texts: list[str]) -> Embeddings:
        """Unit vectors for ``texts`` in order (``.vectors``), with the tokens used."""
        ...

    async def model_card(self) -> ModelCard:
        """The embedding model served, with when it was loaded."""
        ...

    async def close(self) -> None: ...


class HttpRagClient:
    """httpx.AsyncClient calls to a sidecar at ``base_url`` (e.g. http://rag:8002)."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        model: str = MODEL_NAME,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model = model
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport
        )

    async def retrieve(
        self,
        collection: str,
        query: str,
        top_k: int = 4,
        filters: Filters | None = None,
        request_id: str | None = None,
    ) -> list[Chunk]:
        body: dict[str, Any] = {"query": query, "top_k": top_k}
        if filters:
            body["filters"] = filters
        path = f"/v1/collections/{_seg(collection)}/retrieve"
        data = await self._call("POST", path, body, request_id)
        return [Chunk.from_dict(c) for c in data["data"]]

    async def embed(self, texts: list[str]) -> Embeddings:
        data = await self._call("POST", "/v1/embeddings", {"input": texts, "model": self.model})
        rows = sorted(data["data"], key=lambda d: d["index"])
        tokens = int(data.get("usage", {}).get("prompt_tokens", 0))
        return Embeddings([r["embedding"] for r in rows], tokens, str(data.get("model")))

    async def model_card(self) -> ModelCard:
        data = await self._call("GET", "/v1/models")
        m = data["data"][0]
        return ModelCard(m["id"], int(m["created"]), int(m["max_model_len"]), int(m["dimension"]))

    async def create_collection(self, name: str, metadata: dict[str, Any] | None = None) -> None:
        await self._call("POST", "/v1/collections", {"name": name, "metadata": metadata or {}})

    async def ingest(self, collection: str, documents: list[Document]) -> IngestResult:
        docs = [
            {"id": d.id, "text": d.text, "format": d.format, "metadata": d.metadata}
            for d in documents
        ]
        data = await self._call(
            "POST", f"/v1/collections/{_seg(collection)}/documents", {"documents": docs}
        )
        return IngestResult(
            data["collection"], data["version"], data["documents"], data["chunks"], data["replaced"]
        )

    async def delete_document(self, collection: str, document_id: str) -> int:
        path = f"/v1/collections/{_seg(collection)}/documents/{quote(document_id, safe='/')}"
        return int((await self._call("DELETE", path))["chunks"])

    async def delete_collection(self, name: str) -> None:
        await self._call("DELETE", f"/v1/collections/{_seg(name)}")

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(
        self, method: str, path: str, body: Any = None, request_id: str | None = None
    ) -> dict[str, Any]:
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        try:
            response = await self._http.request(method, path, json=body, headers=headers)
        except httpx.TimeoutException as e:
            raise RagUnavailableError(f"RAG sidecar timed out: {e!r}") from e
        except httpx.TransportError as e:
            raise RagUnavailableError(f"RAG sidecar unreachable: {e!r}") from e
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            raise error_from_body(response.status_code, data)
        if not isinstance(data, dict):
            raise RagError(f"RAG sidecar answered {response.status_code} without a JSON object")
        return data


def _seg(name: str) -> str:
    return quote(name, safe="")
