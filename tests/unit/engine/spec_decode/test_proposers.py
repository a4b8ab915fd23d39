"""The proposers: prompt lookup over a sequence's own tokens, and the bounded suffix index
over recent outputs."""

from __future__ import annotations

import numpy as np

from engine.config import SpeculativeConfig
from engine.spec_decode import NgramProposer, SuffixProposer, create_proposer
from engine.spec_decode.proposers import find_continuation
from engine.spec_decode.suffix_index import SuffixIndex


def test_longest_recurring_suffix_wins_and_the_latest_occurrence_continues() -> None:
    #            0  1  2  3  4  5  6  7  8  9 10 11 12
    tokens = np.array([1, 2, 3, 9, 9, 2, 3, 7, 8, 1, 2, 3])
    # "1 2 3" recurs at 0 (followed by 9 9); "2 3" alone also at 5 (followed by 7 8).
    assert find_continuation(tokens, 2, 2, 5) == ([9, 9], 3)
    assert find_continuation(tokens, 2, 2, 2) == ([7, 8], 2)  # the latest "2 3"
    assert find_continuation(tokens, 10, 2, 5)[0] == [9, 9, 2, 3, 7, 8, 1, 2, 3]


def _continuation_by_scans(tokens: np.ndarray, k: int, min_n: int, max_n: int):
    """The definition, plainly: every window of every length, longest first, latest wins."""
    total = len(tokens)
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        for start in range(total - 1 - n, -1, -1):
            if (tokens[start : start + n] == tokens[total - n :]).all():
                return tokens[start + n : start + n + k].tolist(), n
    return [], 0


def test_continuation_equals_the_plain_definition_on_random_sequences() -> None:
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(3000):
        vocab = int(rng.integers(2, 12))  # small vocabularies: many partial repeats
        tokens = rng.integers(0, vocab, size=int(rng.integers(1, 40)))
        min_n = int(rng.integers(1, 4))
        max_n = int(rng.integers(min_n, 7))
        k = int(rng.integers(1, 6))
        want = _continuation_by_scans(tokens, k, min_n, max_n)
        assert find_continuation(tokens, k, min_n, max_n) == want, (tokens, k, min_n, max_n)
        found += want[1] > 0
    assert 1000 < found < 2900  # both outcomes are exercised


def test_no_guess_without_a_repeat_or_below_the_shortest_match() -> None:
    assert find_continuation(np.arange(20), 4, 2, 5) == ([], 0)
    # Only a 1-token repeat ("5"): below prompt_lookup_min 2.
    assert NgramProposer(2, 5).propose([5, 6, 7, 5], 3) == ([], 0)
    assert NgramProposer(1, 5).propose([5, 6, 7, 5], 3) == ([6, 7, 5], 1)


def test_suffix_index_continues_from_other_requests_outputs() -> None:
    proposer = SuffixProposer(2, 4, max_tokens=1000)
    assert proposer.propose([10, 11, 12], 3) == ([], 0)
    proposer.observe([1, 2, 10, 11], [12, 40, 41, 42, 43])
    # A new request ending in "11 12" continues as the stored output did.
    assert proposer.propose([7, 11, 12], 3) == ([40, 41, 42], 2)
    # A tie in match length goes to the sequence's own text, a longer match wins.
    assert proposer.propose([11, 12, 99, 5, 11, 12], 3) == ([99, 5, 11], 2)
    own = [30, 11, 12, 77, 30, 11, 12]
    # "30 11 12" (3) beats the stored "11 12" (2)
    assert proposer.propose(own, 2) == ([77, 30], 3)
    proposer.reset()
    assert proposer.propose([7, 11, 12], 3) == ([], 0)


def test_suffix_index_memory_stays_bounded_and_forgets_the_oldest() -> None:
    index = SuffixIndex(min_n=2, max_n=3, max_tokens=100)
    for doc in range(30):
        index.add([doc * 1000 + t for t in range(10)])
    assert index.num_tokens <= 100 and len(index) == 10
    assert index.continuation([0, 1], 3) == ([], 0)  # the first document was dropped
    assert index.continuation([29000, 29001], 3) == ([29002, 29003, 29004], 2)
    # Entries point only at documents still held.
    held = {doc_id for doc_id, _ in index._docs}
    assert all(doc_id in held for doc_id, _ in index._last.values())
    assert len(index._last) <= (3 - 2 + 1) * index.num_tokens


def test_create_proposer_follows_the_method() -> None:
    assert create_proposer(SpeculativeConfig(method="off")) is None
    assert isinstance(create_proposer(SpeculativeConfig(method="ngram")), NgramProposer)
    assert isinstance(create_proposer(SpeculativeConfig(method="suffix")), SuffixProposer)
