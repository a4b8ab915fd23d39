"""Retrieval for chat, through the RAG client interface.

A chat request with ``"rag": {"collection", "top_k"}`` has its last user message used
as the query; the retrieved chunks become a system message placed before the
conversation, as many as fit the model's context budget, and are returned as
citations (in the response, and in a stream's first chunk).
"""

from __future__ import annotations

from typing import Any

from engine.api import ChatPrompt, Prompt
from gateway.accounting import RequestContext
from gateway.api.generation import GenerationRequest
from gateway.errors import APIError, bad_request, unsupported
from services.rag.client import RagClient
from services.rag.errors import RagError, RagUnavailableError

CHARS_PER_TOKEN = 3.0
"""A conservative estimate (English BPE averages ~4): the budget must never overflow."""
CONTEXT_HEADER = (
    "Answer using the context below when it is relevant, and cite sources by their "
    "[number]. If the context does not contain the answer, say so.\n\n"
)


def rag_error(e: RagError, param: str) -> APIError:
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
        self, ctx: RequestContext, req: GenerationRequest
    ) -> tuple[Prompt, list[dict[str, Any]]]:
        prompt, options = req.prompt, req.rag
        if not isinstance(prompt, ChatPrompt) or options is None:
            raise unsupported("rag", "retrieval for non-chat prompts")
        users = [m for m in prompt.messages if m["role"] == "user" and m["content"].strip()]
        if not users:
            raise bad_request("retrieval needs a user message to search with", "messages")
        try:
            chunks = await self.client.retrieve(
                options.collection, users[-1]["content"], options.top_k, request_id=ctx.request_id
            )
        except RagError as e:
            raise rag_error(e, "rag.collection") from e
        max_len = self._context_length(req.model)
        conversation = sum(len(m["content"]) for m in prompt.messages) / CHARS_PER_TOKEN
        reserve = req.requested_max_tokens or max(64, max_len // 4)
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
