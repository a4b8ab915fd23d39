"""The scheduler's side of speculation: when a sequence guesses, how many tokens, and what
the verified guesses teach (acceptance chances, proposers that learn, the counters).

How many guessed tokens a step checks is chosen to maximise expected tokens per second:
checking k guesses costs what the measured step-cost curve says a step of k more rows costs
(step_cost.py), and yields the chance that the first guess is kept, plus the chance that the
first two are, and so on. Those chances are learnt as the engine runs, per guessed position
and per length of the repeat the guess continues, over every request and for each request
on its own. So a request that copies its prompt guesses far ahead, chat that seldom repeats
stops guessing, and a GPU (where extra rows cost almost nothing) guesses more than 2 CPU
cores do.
"""

from __future__ import annotations

import numpy as np

from engine.config import SpeculativeConfig
from engine.sequence import Sequence
from engine.spec_decode.proposers import Proposer
from engine.spec_decode.step_cost import StepCosts
from engine.spec_decode.verify import SpecStats

# A request's own record at a position weighs as much as the engine's after this many guesses.
_OWN_WEIGHT = 4.0
# A position tried fewer times than this borrows the chance of the one before it when that is
# higher: a guess kept that far is copying, and is not judged by the few tries made beyond it.
_SETTLED_TRIES = 8


class Acceptance:
    """Kept / tried counts of guessed positions (position j counted only when the j before it
    were kept), by the length of the repeat the guess continued, over every request; and
    each running request's own counts by position, apart for guesses that continue only its
    last token recurring (a repeat of 1) and those that continue a longer repeat: a request
    that copies its prompt is seldom right after a lone token, and those misses must not
    stop its copying."""

    def __init__(self, max_repeat: int, positions: int) -> None:
        # Each starts at 1 kept of 2 tried: an even chance before anything is seen.
        self.kept = np.ones((max_repeat + 1, positions))
        self.tried = np.full((max_repeat + 1, positions), 2.0)
        self._own: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}

    def chances(self, seq_id: int, repeat: int, k: int) -> np.ndarray:
        """The chance that each of k guessed positions is kept if the ones before it were."""
        chance = self.kept[repeat, :k] / self.tried[repeat, :k]
        for j in range(1, k):
            if self.tried[repeat, j] < _SETTLED_TRIES:
                chance[j] = max(chance[j], chance[j - 1])
        own = self._own.get((seq_id, repeat > 1))
        if own is not None:
            kept, tried = own
            chance = (kept[:k] + _OWN_WEIGHT * chance) / (tried[:k] + _OWN_WEIGHT)
        return chance

    def record(self, seq_id: int, repeat: int, guessed: int, accepted: int) -> None:
        positions = self.kept.shape[1]
        own = self._own.setdefault((seq_id, repeat > 1), (np.zeros(positions), np.zeros(positions)))
        tried = min(guessed, accepted + 1)  # positions reached: the kept ones and the first miss
        for counts_kept, counts_tried in ((self.kept[repeat], self.tried[repeat]), own):
            counts_tried[:tried] += 1
            counts_kept[:accepted] += 1

    def forget(self, seq_id: int) -> None:
        self._own.pop((seq_id, False), None)
        self._own.pop((seq_id, True), None)


def best_guess_length(chances: np.ndarray, costs: StepCosts, rows: int) -> int:
    """How many of the guessed positions to check in a step that already feeds ``rows`` rows
    (this sequence's own token included): the k that maximises the step's expected tokens
    (one a row, plus the chance of each guessed position being reached and kept) over its
    cost; 0 when no guess pays."""
    best_k, best = 0, rows / costs(rows)
    expected = float(rows)
    for k, reach in enumerate(np.cumprod(chances), start=1):
        expected += float(reach)
        value = expected / costs(rows + k)
        if value > best:
            best_k, best = k, value
    return best_k


class Speculator:
    """Guesses for decoding sequences, as long as the step-cost curve and what each guessed
    position has been worth so far say pays."""

    def __init__(self, config: SpeculativeConfig, proposer: Proposer, costs: StepCosts) -> None:
        self.config = config
        self.proposer = proposer
        self.costs = costs
        # A count for every position a guess may reach (0..k-1) from the start, so the
        # per-position series exist before the longest guess is made.
        self.stats = SpecStats(accepted_per_position=[0] * config.num_speculative_tokens)
        self.acceptance = Acceptance(config.prompt_lookup_max, config.num_speculative_tokens)
        self._repeat: dict[int, int] = {}  # seq_id -> repeat length of its guess in flight

    def active(self, num_running: int) -> bool:
        """Whether this step speculates: not when the batch alone is big enough to keep the
        CPU busy (verifying guesses then costs more than it saves)."""
        limit = self.config.disable_by_batch_size
        return limit == 0 or num_running <= limit

    def guess(self, seq: Sequence, budget: int, rows: int) -> list[int]:
        """Guessed next tokens of a decoding sequence, within the step's token ``budget`` (its
        own token included) and its length limits, for a step feeding ``rows`` rows so far
        (its own included); [] where it must not guess (constrained by a grammar, or still
        below min_tokens: EOS is suppressed position by position there) or no guess pays."""
        p = seq.params
        if seq.grammar is not None or seq.num_output_tokens < p.min_tokens:
            return []
        room = min(
            self.config.num_speculative_tokens,
            budget - 1,
            p.max_tokens - seq.num_output_tokens - 1,
            seq.max_total_tokens - seq.num_tokens - 1,
        )
        if room < 1:
            return []
        guess, repeat = self.proposer.propose(seq.all_token_ids, room)
        if not guess:
            return []
        chances = self.acceptance.chances(seq.seq_id, repeat, len(guess))
        guess = guess[: best_guess_length(chances, self.costs, rows)]
        if guess:
            self._repeat[seq.seq_id] = repeat
        return guess

    def verified(self, seq: Sequence, num_guessed: int, num_accepted: int) -> None:
        self.stats.record(num_guessed, num_accepted)
        repeat = self._repeat.pop(seq.seq_id, self.config.prompt_lookup_min)
        self.acceptance.record(seq.seq_id, repeat, num_guessed, num_accepted)

    def finished(self, seq: Sequence, learn: bool) -> None:
        """A sequence ended; a proposer that learns remembers its output unless aborted."""
        self._repeat.pop(seq.seq_id, None)
        self.acceptance.forget(seq.seq_id)
        if learn and seq.output_token_ids:
            self.proposer.observe(seq.prompt_token_ids, seq.output_token_ids)
