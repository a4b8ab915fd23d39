"""What a caller of an engine sees, whatever the transport: prompts, the engine's info, and
the client protocol the gateway (and anyone else) codes against.

``engine.local_client.LocalEngineClient`` serves it from an AsyncEngine in this process,
``engine.api.grpc_client.GrpcEngineClient`` from an engine pod over gRPC. Both raise the
errors of ``engine.api.errors``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.api.outputs import RequestOutput
from engine.api.params import SamplingParams

REQUEST_ID_METADATA = "x-request-id"
"""gRPC metadata key of the caller's request id, logged by the engine with its own lines."""


def engine_request_id(correlation_id: str | None = None) -> str:
    """A request id unique among an engine's in-flight requests, led by the caller's id.

    The caller's id alone is not unique enough: a client may reuse its X-Request-Id, and
    a completion with several prompts sends one engine request per prompt.
    """
    if correlation_id:
        return f"{correlation_id}-{uuid.uuid4().hex[:12]}"
    return f"req-{uuid.uuid4().hex}"


@dataclass
class ChatPrompt:
    """Messages to render with the engine's own chat template."""

    messages: list[dict[str, str]]
    add_generation_prompt: bool = True


Prompt = str | Sequence[int] | ChatPrompt
"""Text, token ids, or chat messages the engine renders with its template."""


@dataclass
class EngineLoad:
    """How busy an engine is right now."""

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    num_free_blocks: int = 0
    waiting_capacity_left: int = 0


@dataclass
class EngineInfo:
    """An engine's model, limits and load (the Info RPC's content)."""

    model: str
    backend: str
    quantization: str
    max_model_len: int
    accepting: bool
    model_source: str = ""
    device: str = ""
    dtype: str = ""
    num_kv_blocks: int = 0
    block_size: int = 0
    max_num_seqs: int = 0
    max_num_batched_tokens: int = 0
    max_waiting: int = 0
    created: int = 0
    """Unix time at which the engine finished loading its model (the model's `created`)."""
    version: str = ""
    load: EngineLoad = field(default_factory=EngineLoad)


class GenerationStream(Protocol):
    """An accepted request: its id, prompt tokens, and outputs step by step."""

    request_id: str
    prompt_token_ids: list[int]

    def __aiter__(self) -> AsyncIterator[RequestOutput]: ...

    async def aclose(self) -> None:
        """Stop reading; aborts the request unless it finished."""

    def token_text(self, token_id: int) -> str:
        """The text of one token seen in this stream's logprobs (for API responses)."""


class EngineClient(Protocol):
    """What the gateway needs from an engine."""

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> GenerationStream:
        """Start a request; returns once the engine accepted it (or raises).

        ``correlation_id`` is the caller's request id (the gateway's X-Request-Id): the
        engine logs it, and derives its own unique request id from it when none is given.
        """

    async def abort(self, request_id: str) -> bool:
        """Abort a request; True when it was in flight."""

    async def info(self) -> EngineInfo:
        """The engine's model, limits and load."""

    async def tokenize(
        self, prompt: str | ChatPrompt, add_special_tokens: bool = True
    ) -> list[int]:
        """The prompt's token ids (a chat rendered through the model's template first)."""

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of token ids, special tokens included."""

    async def close(self) -> None:
        """Release connections (not the engine)."""
