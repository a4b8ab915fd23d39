"""Which guessed tokens a step keeps, and the counters vLLM reports about it.

The runner samples every position of a speculating sequence as if it were decoding normally
there: the same sampler, the same per-request generator, one uniform draw per position in
order, with the guessed tokens before a position counted as output (penalties see them).
A guess is kept while it equals the token so sampled; the first position that differs keeps
its sampled token instead, and a fully accepted guess gains the next position's token too.

For greedy rows this is exact equality with decoding one token a step. For sampled rows it
is rejection sampling with a one-hot draft (Leviathan et al. 2023, as vLLM verifies n-gram
drafts): a guess d at a position whose distribution is p is kept with probability p(d), and
when it is not, the token drawn is distributed as p without d, renormalised, which is
max(0, p - q) normalised for q = one-hot(d). Drawing that token with the same uniform the
normal path would use also makes a seeded request's tokens identical with speculation on or
off, once the generator is rewound to the draws actually kept (the runner does that).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field


def accepted_prefix(guess: Seq[int], sampled: Seq[int]) -> list[int]:
    """The tokens a step emits: ``sampled`` holds len(guess) + 1 tokens, one per position;
    keep guessed tokens while they equal the sampled ones, then one sampled token."""
    kept = 0
    while kept < len(guess) and guess[kept] == sampled[kept]:
        kept += 1
    return list(sampled[: kept + 1])


@dataclass
class SpecStats:
    """Totals since start, with vLLM's meanings: drafts are verification steps of one sequence,
    draft tokens the guessed tokens checked, accepted those kept, and per position how often
    the i-th guess was kept."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)

    def record(self, num_guessed: int, num_accepted: int) -> None:
        """One verification step; accepted_per_position must span the longest guess."""
        self.drafts += 1
        self.draft_tokens += num_guessed
        self.accepted_tokens += num_accepted
        for i in range(num_accepted):
            self.accepted_per_position[i] += 1

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens a verification step yields on average: 1 + accepted per draft."""
        return 1.0 + self.accepted_tokens / self.drafts if self.drafts else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0
