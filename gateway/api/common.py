"""Schema pieces and conversions shared by the chat and completions endpoints."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.api import SamplingParams, SamplingParamsError, StructuredOutputs
from gateway.errors import bad_request

MAX_N = 16
"""Completions per request; OpenAI caps n at 128, a CPU engine cannot serve that usefully."""


class StrictModel(BaseModel):
    """Unknown fields are a 400 naming them, as OpenAI does."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(StrictModel):
    include_usage: bool = Field(False, description="send a final chunk with the usage")
    continuous_usage_stats: bool = Field(
        False, description="vLLM extension: every chunk carries the usage so far"
    )


class StructuredOutputsField(StrictModel):
    """vLLM's ``structured_outputs``: exactly one form constrains the generated text."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_schema: dict[str, Any] | str | None = Field(
        None, alias="json", description="a JSON schema the output validates against"
    )
    regex: str | None = Field(None, description="a regular expression the output matches")
    choice: list[str] | None = Field(None, description="the output is one of these strings")
    grammar: str | None = Field(None, description="an EBNF grammar (xgrammar's dialect)")
    json_object: bool | None = Field(None, description="any JSON object")

    def to_engine(self) -> StructuredOutputs:
        if self.json_schema is not None:
            return StructuredOutputs.json_schema(self.json_schema)
        return StructuredOutputs(
            json_object=bool(self.json_object),
            regex=self.regex,
            choice=tuple(self.choice) if self.choice is not None else None,
            grammar=self.grammar,
        )


class JsonSchemaFormat(StrictModel):
    """OpenAI's ``response_format.json_schema``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="the JSON schema"
    )
    strict: bool | None = Field(None, description="always enforced: decoding is constrained")


class ResponseFormat(StrictModel):
    """OpenAI's ``response_format``: free text, any JSON object, or a JSON schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given exactly when type is json_schema")
        return self

    def to_engine(self) -> StructuredOutputs | None:
        if self.type == "json_object":
            return StructuredOutputs(json_object=True)
        if self.json_schema is not None:
            return StructuredOutputs.json_schema(self.json_schema.schema_)
        return None


class RagOptions(StrictModel):
    """Retrieve context from a RAG collection for this chat (Tessera's extension)."""

    collection: str = Field(..., min_length=1)
    top_k: int = Field(4, ge=1, le=50)


class SamplingFields(StrictModel):
    """Sampling fields common to chat and completions (OpenAI plus vLLM's extras)."""

    model: str = Field(..., description="model id from /v1/models")
    n: int = Field(1, ge=1, le=MAX_N, description="completions to generate")
    max_tokens: int | None = Field(None, ge=1, description="cap on generated tokens")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, description="same seed and request, same output")
    stop: str | list[str] | None = Field(None, description="up to 4 stop sequences")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="end-user id (logged as given)")
    # vLLM's extras
    top_k: int = Field(0, ge=-1, description="keep the k most likely tokens; 0/-1 off")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    logit_bias: dict[str, float] | None = Field(
        None, description="token id -> bias in [-100, 100] added to its logit"
    )
    structured_outputs: StructuredOutputsField | None = Field(
        None, description="vLLM extra: constrain the output (json, regex, choice, grammar)"
    )

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise bad_request("at most 4 stop sequences are allowed", "stop")
        if any(not s for s in stops):
            raise bad_request("stop sequences must be non-empty", "stop")
        return stops

    def cache_body(self, **override: Any) -> dict[str, Any]:
        """The request as the response cache keys it: streaming and the end-user id do not
        change the answer."""
        body = self.model_dump(mode="json", exclude={"stream", "stream_options", "user"})
        body.update(override)
        return body

    def token_biases(self) -> dict[int, float]:
        """logit_bias with integer token ids (OpenAI sends them as strings)."""
        biases = {}
        for key, bias in (self.logit_bias or {}).items():
            if not key.strip().isdigit():
                raise bad_request(f"logit_bias key {key[:20]!r} is not a token id", "logit_bias")
            biases[int(key)] = bias
        return biases

    def constraint(self, response_format: ResponseFormat | None = None) -> StructuredOutputs | None:
        """What constrains the output: response_format or structured_outputs, not both."""
        formatted = response_format.to_engine() if response_format is not None else None
        if formatted is not None and self.structured_outputs is not None:
            raise bad_request(
                "give response_format or structured_outputs, not both", "structured_outputs"
            )
        if self.structured_outputs is not None:
            return self.structured_outputs.to_engine()
        return formatted

    def sampling_params(
        self,
        max_model_len: int,
        logprobs: int | None,
        response_format: ResponseFormat | None = None,
    ) -> SamplingParams:
        """Engine params; max_tokens defaults to the rest of the context."""
        max_tokens = self.max_tokens if self.max_tokens is not None else max_model_len
        if max_tokens > max_model_len:
            raise bad_request(
                f"max_tokens is {max_tokens}, but this model's context length is "
                f"{max_model_len} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        try:
            return SamplingParams(
                n=self.n,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                min_p=self.min_p,
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
                repetition_penalty=self.repetition_penalty,
                seed=self.seed,
                max_tokens=max_tokens,
                min_tokens=min(self.min_tokens, max_tokens),
                stop=self.stop_list(),
                ignore_eos=self.ignore_eos,
                logprobs=logprobs,
                logit_bias=self.token_biases(),
                structured_outputs=self.constraint(response_format),
            )
        except SamplingParamsError as e:
            raise bad_request(str(e), str(e).split(" ", 1)[0]) from e

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        opts = self.stream_options
        return bool(self.stream and opts and opts.include_usage and opts.continuous_usage_stats)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


def make_usage(prompt: int, completion: int, cached: int) -> Usage:
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())
