"""POST /tokenize and /detokenize, as vLLM and llama.cpp's server serve them: clients need
token ids for logit_bias and to count a prompt. An engine serving the model tokenizes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, model_validator

from engine.api import ChatPrompt, EngineClient
from gateway.accounting import RequestContext
from gateway.api.chat import ChatMessage
from gateway.api.common import StrictModel
from gateway.api.http import gateway_of, opens, respond
from gateway.engines.pool import RETRYABLE, EnginePool
from gateway.errors import bad_request, from_engine_error, overloaded

router = APIRouter()


class TokenizeRequest(StrictModel):
    """A text (``prompt``) or a chat (``messages``) to tokenize with the model's tokenizer."""

    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = Field(
        True, description="for messages: end with the reply's start"
    )
    add_special_tokens: bool = Field(True, description="for a prompt: add BOS as the model does")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(StrictModel):
    model: str
    tokens: list[int] = Field(..., description="token ids")


class DetokenizeResponse(BaseModel):
    prompt: str


class Tokenization:
    """Asks an engine that serves the model (any one: they share the tokenizer)."""

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool

    async def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        max_len = self.pool.require_model(req.model)
        prompt: str | ChatPrompt
        if req.messages is not None:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            prompt = ChatPrompt(messages, req.add_generation_prompt)
        else:
            prompt = req.prompt or ""
        client = self._client(req.model)
        try:
            tokens = await client.tokenize(prompt, req.add_special_tokens)
        except Exception as e:
            raise _mapped(e) from e
        return TokenizeResponse(count=len(tokens), max_model_len=max_len, tokens=tokens)

    async def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        self.pool.require_model(req.model)
        if any(t < 0 for t in req.tokens):
            raise bad_request("token ids are >= 0", "tokens")
        try:
            text = await self._client(req.model).detokenize(req.tokens)
        except Exception as e:
            raise _mapped(e) from e
        return DetokenizeResponse(prompt=text)

    def _client(self, model: str) -> EngineClient:
        endpoint = self.pool.choose(model, None, [])
        if endpoint is None:
            raise overloaded("no engine is available; retry shortly", 1.0, status=503)
        return endpoint.client


def _mapped(error: Exception) -> Exception:
    mapped = from_engine_error(error)
    if mapped is not None:
        return mapped
    if isinstance(error, RETRYABLE):
        return overloaded(f"the engine is unavailable ({error}); retry shortly", 1.0, status=503)
    return error


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(
    body: TokenizeRequest,
    request: Request,
    ctx: RequestContext = Depends(opens("tokenize")),  # noqa: B008 (FastAPI's idiom)
) -> Response:
    """A prompt's or a chat's token ids with the model's tokenizer (vLLM's /tokenize)."""
    return await respond(request, ctx, gateway_of(request).tokenization.tokenize(body))


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(
    body: DetokenizeRequest,
    request: Request,
    ctx: RequestContext = Depends(opens("detokenize")),  # noqa: B008 (FastAPI's idiom)
) -> Response:
    """The text of token ids (vLLM's /detokenize)."""
    return await respond(request, ctx, gateway_of(request).tokenization.detokenize(body))
