"""What the engine hands back per step: text deltas, tokens, logprobs, finish reasons, timings."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(str, enum.Enum):
    """Why a sequence stopped, in OpenAI's vocabulary (plus abort)."""

    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # client gone, deadline passed, or engine shutting down


@dataclass
class TokenLogprob:
    """The sampled token's logprob and the top alternatives, best first."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class CompletionDelta:
    """New output of one of a request's n completions since the previous step."""

    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that matched


@dataclass
class RequestTimings:
    """Seconds since the request arrived, as measured by the engine."""

    queued: float | None = None  # arrival -> first scheduled
    first_token: float | None = None  # arrival -> first token (TTFT)
    finished: float | None = None  # arrival -> last completion finished
    token_times: list[float] = field(default_factory=list)  # arrival -> each token (index 0)


@dataclass
class RequestOutput:
    """One request's progress in one step (streaming deltas, not cumulative)."""

    request_id: str
    deltas: list[CompletionDelta]
    finished: bool
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int  # across all n completions so far
    timings: RequestTimings


@dataclass
class Completion:
    """One finished completion, accumulated from its deltas."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None


@dataclass
class RequestResult:
    """A finished request: all its completions and its usage."""

    request_id: str
    prompt_token_ids: list[int]
    completions: list[Completion]
    num_cached_tokens: int
    timings: RequestTimings

    def absorb(self, out: RequestOutput) -> None:
        """Append one step's deltas."""
        for d in out.deltas:
            c = self.completions[d.index]
            c.text += d.text
            c.token_ids.extend(d.token_ids)
            c.logprobs.extend(d.logprobs)
            if d.finish_reason is not None:
                c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason
        self.num_cached_tokens = out.num_cached_tokens
        self.timings = out.timings
