"""One generation stream: its tokens, status, sampling params and KV block table."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.api.outputs import FinishReason, TokenLogprob
from engine.api.params import SamplingParams


class SequenceStatus(enum.Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # back in the waiting queue; its KV will be recomputed
    FINISHED = "finished"


@dataclass
class SequenceTimings:
    """Wall-clock stamps (time.monotonic) that responses and metrics report."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    token_times: list[float] = field(default_factory=list)


class Sequence:
    """One completion of one request; a request with ``n > 1`` owns n sequences.

    ``num_computed_tokens`` counts tokens whose KV is in the cache; the tokens
    the next step must feed are ``all_token_ids[num_computed_tokens:]``.
    """

    def __init__(
        self,
        seq_id: int,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        index: int = 0,
        priority: int = 0,
        eos_token_ids: tuple[int, ...] = (),
        max_total_tokens: int,
    ) -> None:
        self.seq_id = seq_id
        self.request_id = request_id
        self.index = index  # which of the request's n completions
        self.priority = priority  # lower is served first under the priority policy
        self.params = params
        self.prompt_token_ids = prompt_token_ids
        self.output_token_ids: list[int] = []
        self.output_logprobs: list[TokenLogprob] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.stop_reason: str | int | None = None  # the stop string or token id that matched
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.num_preemptions = 0
        self.eos_token_ids = eos_token_ids
        self.max_total_tokens = max_total_tokens  # the model's context length
        self.timings = SequenceTimings()
        self.grammar: Any = None
        """The xgrammar matcher of a constrained sequence (engine.structured_output)."""
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed + index)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int, logprob: TokenLogprob | None, now: float) -> None:
        """Record one sampled token and its timing."""
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        if logprob is not None:
            self.output_logprobs.append(logprob)
        if self.timings.first_token is None:
            self.timings.first_token = now
        self.timings.last_token = now
        self.timings.token_times.append(now)

    def drop_last_tokens(self, n: int) -> None:
        """Forget the last n output tokens (emitted by a speculative step past a stop string,
        so never part of the output); their KV is not reused, as the sequence is stopping."""
        del self.output_token_ids[-n:]
        del self.all_token_ids[-n:]
        del self.timings.token_times[-n:]
        if len(self.output_logprobs) > len(self.output_token_ids):
            del self.output_logprobs[len(self.output_token_ids) :]

    def check_stop_token(self) -> FinishReason | None:
        """Finish reason implied by the newest token and the length limits, if any."""
        p = self.params
        n_out = self.num_output_tokens
        if n_out >= p.min_tokens:
            last = self.output_token_ids[-1]
            if not p.ignore_eos and last in self.eos_token_ids:
                self.stop_reason = None
                return FinishReason.STOP
            if last in p.stop_token_ids:
                self.stop_reason = last
                return FinishReason.STOP
        if n_out >= p.max_tokens or self.num_tokens >= self.max_total_tokens:
            return FinishReason.LENGTH
        return None

    def suppressed_token_ids(self) -> list[int]:
        """Tokens that may not be sampled now: EOS and stop ids before min_tokens."""
        if self.num_output_tokens >= self.params.min_tokens:
            return []
        return [*self.eos_token_ids, *self.params.stop_token_ids]

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request_id!r}, status={self.status.value}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens})"
        )
