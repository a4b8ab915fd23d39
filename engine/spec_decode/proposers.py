"""Proposers: where a guess of a sequence's next tokens comes from.

NgramProposer is prompt lookup (vLLM's ``ngram``, llama.cpp's lookup decoding): find the
sequence's last n tokens earlier in its own prompt and output, longest n first and the most
recent occurrence, and guess the tokens that followed. SuffixProposer adds a bounded index
over the recent outputs of every request (the SuffixDecoding idea), so an answer pattern seen
before is guessed too.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Protocol

import numpy as np

from engine.config import SpeculativeConfig
from engine.spec_decode.suffix_index import SuffixIndex


class Proposer(Protocol):
    """Guesses up to ``k`` next tokens of a sequence from its tokens so far."""

    def propose(self, tokens: Seq[int], k: int) -> tuple[list[int], int]:
        """(up to k guessed tokens, the length of the repeat of the sequence's last tokens
        they continue: a longer repeat is a safer guess); ([], 0) when there is no guess."""
        ...

    def observe(self, prompt: Seq[int], output: Seq[int]) -> None:
        """A sequence finished with ``output``: remember it if this proposer learns."""
        ...

    def reset(self) -> None:
        """Forget what was learnt (the model or its weights changed)."""
        ...


def find_continuation(tokens: np.ndarray, k: int, min_n: int, max_n: int) -> tuple[list[int], int]:
    """(the k tokens after the most recent earlier occurrence of the longest suffix of
    ``tokens`` of min_n..max_n tokens, that suffix's length); ([], 0) when none recurs.

    Every earlier occurrence ends on the last token: only those places are extended
    backwards, one comparison per suffix length, instead of one scan of the whole sequence
    per length (which took 60-140 us a step, most of a chat step's speculation overhead)."""
    total = len(tokens)
    if total < 2 or min_n > max_n:
        return [], 0
    ends = np.flatnonzero(tokens[: total - 1] == tokens[total - 1])  # never the suffix itself
    if ends.size == 0:
        return [], 0
    matched = np.ones(ends.size, dtype=np.int64)  # suffix tokens each place matches so far
    alive = np.ones(ends.size, dtype=bool)
    for j in range(1, max_n):
        back = ends - j
        alive &= back >= 0
        alive[alive] = tokens[back[alive]] == tokens[total - 1 - j]
        if not alive.any():
            break
        matched += alive
    n = int(matched.max())
    if n < min_n:
        return [], 0
    start = int(ends[np.flatnonzero(matched >= n)[-1]]) + 1
    return tokens[start : start + k].tolist(), n


class NgramProposer:
    """Prompt lookup over the sequence's own tokens."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n

    def propose(self, tokens: Seq[int], k: int) -> tuple[list[int], int]:
        return find_continuation(np.asarray(tokens, dtype=np.int64), k, self.min_n, self.max_n)

    def observe(self, prompt: Seq[int], output: Seq[int]) -> None:
        return None

    def reset(self) -> None:
        return None


class SuffixProposer:
    """The sequence's own tokens, or recent outputs of every request: whichever continues the
    longer suffix (the sequence's own on a tie)."""

    def __init__(self, min_n: int, max_n: int, max_tokens: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.index = SuffixIndex(min_n, max_n, max_tokens)

    def propose(self, tokens: Seq[int], k: int) -> tuple[list[int], int]:
        own = find_continuation(np.asarray(tokens, dtype=np.int64), k, self.min_n, self.max_n)
        seen = self.index.continuation(tokens, k)
        return seen if seen[1] > own[1] else own

    def observe(self, prompt: Seq[int], output: Seq[int]) -> None:
        # The last prompt tokens lead into the output: keep them so the output's first tokens
        # can be guessed from them.
        self.index.add([*prompt[-self.max_n :], *output])

    def reset(self) -> None:
        self.index.clear()


def create_proposer(config: SpeculativeConfig) -> Proposer | None:
    """The configured proposer, or None when speculation is off."""
    if config.method == "ngram":
        return NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    if config.method == "suffix":
        return SuffixProposer(
            config.prompt_lookup_min, config.prompt_lookup_max, config.suffix_max_tokens
        )
    return None
