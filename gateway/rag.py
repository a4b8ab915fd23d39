"""Retrieval for chat and the embeddings endpoint, through the RAG client interface.

A chat request with ``"rag": {"collection", "top_k"}`` has its last user message used
as the query; the retrieved chunks become a system message placed before the
conversation, as many as fit the model's context budget, and are returned as
citations (in the response, and in a stream's first chunk).
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from pydantic import BaseModel, Field

from engine.api import ChatPrompt, Prompt
from gateway.api.common import StrictModel
from gateway.api.generation import RequestContext
from gateway.errors import APIError, bad_request, unsupported
from services.rag.client import RagClient
from services.rag.errors import RagError, RagUnavailableError

CHARS_PER_TOKEN = 3.0
"""A conservative estimate (English BPE averages ~4): the budget must never overflow."""
CONTEXT_HEADER = (
    "Answer using the context below when it is relevant, and cite sources by their "
    "[number]. If the context does not contain the answer, say so.\n\n"
)


def _rag_error(e: RagError, param: str) -> APIError:
    if isinstance(e, RagUnavailableError):
        return APIError(
            503,
            f"retrieval is unavailable: {e.message}",
            "service_unavailable_error",
            None,
            "rag_unavailable",
            1.0,
        )
    return APIError(e.status, e.message, e.type, e.param or param, e.code)


class Retrieval:
    """The retriever the Generation core calls for chat requests carrying ``rag``."""

    def __init__(self, client: RagClient, context_length: Any) -> None:
        self.client = client
        self._context_length = context_length  # model name -> tokens

    async def __call__(
        self, ctx: RequestContext, req: Any, prompt: Prompt
    ) -> tuple[Prompt, list[dict[str, Any]]]:
        if not isinstance(prompt, ChatPrompt):
            raise unsupported("rag", "retrieval for non-chat prompts")
        users = [m for m in prompt.messages if m["role"] == "user" and m["content"].strip()]
        if not users:
            raise bad_request("retrieval needs a user message to search with", "messages")
        try:
            chunks = await self.client.retrieve(
                req.rag.collection,
                users[-1]["content"],
                req.rag.top_k,
                request_id=ctx.request_id,
            )
        except RagError as e:
            raise _rag_error(e, "rag.collection") from e
        max_len = self._context_length(req.model)
        conversation = sum(len(m["content"]) for m in prompt.messages) / CHARS_PER_TOKEN
        reserve = req.max_tokens or max(64, max_len // 4)
        budget = (max_len - reserve - conversation - 64) * CHARS_PER_TOKEN
        parts: list[str] = []
        used = []
        for i, c in enumerate(chunks, 1):
            piece = f"[{i}] ({c.document_id}) {c.text.strip()}\n\n"
            if sum(len(p) for p in parts) + len(piece) > budget:
                break
            parts.append(piece)
            used.append(c)
        citations = [
            {
                "document_id": c.document_id,
                "chunk_id": c.chunk_id,
                "text": c.text,
                "score": c.score,
                "metadata": dict(c.metadata),
            }
            for c in used
        ]
        if not parts:
            return prompt, citations
        context = {"role": "system", "content": CONTEXT_HEADER + "".join(parts).rstrip()}
        return ChatPrompt([context, *prompt.messages], prompt.add_generation_prompt), citations


# ---- /v1/embeddings ------------------------------------------------------------------
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
        raise _rag_error(e, "input") from e
    data = []
    for i, v in enumerate(result.vectors):
        value: list[float] | str = v
        if req.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        data.append(Embedding(index=i, embedding=value))
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingList(data=data, model=model, usage=usage)
