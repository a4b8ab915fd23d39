"""The scheduler's side of speculation: when a sequence guesses, how many tokens, and what
the verified guesses teach (per-request guess length, proposers that learn, the counters)."""

from __future__ import annotations

from engine.config import SpeculativeConfig
from engine.sequence import Sequence
from engine.spec_decode.proposers import Proposer
from engine.spec_decode.verify import SpecStats


class Speculator:
    """Guesses for decoding sequences, with a guess length that follows each request's luck:
    one more than it last had accepted, up to num_speculative_tokens (a fully accepted guess
    grows by one; a rejected one drops to a single token)."""

    def __init__(self, config: SpeculativeConfig, proposer: Proposer) -> None:
        self.config = config
        self.proposer = proposer
        # A count for every position a guess may reach (0..k-1) from the start, so the
        # per-position series exist before the longest guess is made.
        self.stats = SpecStats(accepted_per_position=[0] * config.num_speculative_tokens)
        self._next_len: dict[int, int] = {}

    def active(self, num_running: int) -> bool:
        """Whether this step speculates: not when the batch alone is big enough to keep the
        CPU busy (verifying guesses then costs more than it saves)."""
        limit = self.config.disable_by_batch_size
        return limit == 0 or num_running <= limit

    def guess(self, seq: Sequence, budget: int) -> list[int]:
        """Guessed next tokens of a decoding sequence, within the step's token ``budget`` (its
        own token included) and its length limits; [] where it must not guess: constrained by
        a grammar, or still below min_tokens (EOS is suppressed position by position there)."""
        p = seq.params
        if seq.grammar is not None or seq.num_output_tokens < p.min_tokens:
            return []
        room = min(
            self._next_len.get(seq.seq_id, self.config.num_speculative_tokens),
            budget - 1,
            p.max_tokens - seq.num_output_tokens - 1,
            seq.max_total_tokens - seq.num_tokens - 1,
        )
        if room < 1:
            return []
        return self.proposer.propose(seq.all_token_ids, room)

    def verified(self, seq: Sequence, num_guessed: int, num_accepted: int) -> None:
        self.stats.record(num_guessed, num_accepted)
        self._next_len[seq.seq_id] = min(self.config.num_speculative_tokens, num_accepted + 1)

    def finished(self, seq: Sequence, learn: bool) -> None:
        """A sequence ended; a proposer that learns remembers its output unless aborted."""
        self._next_len.pop(seq.seq_id, None)
        if learn and seq.output_token_ids:
            self.proposer.observe(seq.prompt_token_ids, seq.output_token_ids)
