"""The EngineClient of an AsyncEngine in this process (embedded `tessera serve`): a thin
adapter, the in-process twin of engine.api.grpc_client.GrpcEngineClient."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from engine.api import (
    ChatPrompt,
    EngineDeadError,
    EngineInfo,
    EngineUnavailableError,
    GenerationStream,
    Prompt,
    RequestOutput,
    SamplingParams,
    engine_request_id,
)
from engine.async_engine import AsyncEngine, RequestStream


class _LocalStream:
    def __init__(self, stream: RequestStream, engine: AsyncEngine) -> None:
        self._stream = stream
        self.request_id = stream.request_id
        self.prompt_token_ids = stream.prompt_token_ids
        self.token_text = engine.token_text

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._stream

    async def aclose(self) -> None:
        self._stream.close()


class LocalEngineClient:
    """An AsyncEngine in this process, behind the EngineClient interface."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> GenerationStream:
        request_id = request_id or engine_request_id(correlation_id)
        deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            stream = await self.engine.add_request(prompt, params, request_id, priority, deadline)
        except EngineDeadError as e:
            raise EngineUnavailableError(str(e)) from e
        return _LocalStream(stream, self.engine)

    async def abort(self, request_id: str) -> bool:
        return await self.engine.abort_request(request_id)

    async def info(self) -> EngineInfo:
        return self.engine.info()

    async def tokenize(
        self, prompt: str | ChatPrompt, add_special_tokens: bool = True
    ) -> list[int]:
        return self.engine.tokenize(prompt, add_special_tokens)

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.engine.detokenize(token_ids)

    async def close(self) -> None:
        return None
