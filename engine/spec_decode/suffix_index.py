"""A bounded index of recent outputs: for every n-gram of min_n..max_n tokens, where it occurred
last, so a sequence ending with that n-gram can be continued the way an earlier answer went.

Memory is bounded by ``max_tokens`` stored tokens: documents are kept oldest first and the
oldest are dropped, with their index entries, once the total passes the bound. An entry
points at the latest occurrence only, so the index holds at most max_n - min_n + 1 entries
per stored token. It lives on the engine thread (no locking); ``clear`` empties it at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence as Seq


class SuffixIndex:
    def __init__(self, min_n: int, max_n: int, max_tokens: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.max_tokens = max_tokens
        self._docs: deque[tuple[int, list[int]]] = deque()  # (doc id, tokens), oldest first
        self._next_id = 0
        self._num_tokens = 0
        # n-gram -> (doc id, position just after it) of its latest occurrence
        self._last: dict[tuple[int, ...], tuple[int, int]] = {}
        self._by_id: dict[int, list[int]] = {}

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, tokens: Seq[int]) -> None:
        """Remember a finished sequence's tokens (dropping the oldest beyond the bound)."""
        doc = list(tokens)[-self.max_tokens :]
        if len(doc) < 2:
            return
        doc_id = self._next_id
        self._next_id += 1
        self._docs.append((doc_id, doc))
        self._by_id[doc_id] = doc
        self._num_tokens += len(doc)
        for end in range(self.min_n, len(doc)):  # n-grams ending at end - 1, continued at end
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._last[tuple(doc[end - n : end])] = (doc_id, end)
        while self._num_tokens > self.max_tokens:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        doc_id, doc = self._docs.popleft()
        del self._by_id[doc_id]
        self._num_tokens -= len(doc)
        for end in range(self.min_n, len(doc)):
            for n in range(self.min_n, min(self.max_n, end) + 1):
                key = tuple(doc[end - n : end])
                if self._last.get(key, (None,))[0] == doc_id:
                    del self._last[key]

    def continuation(self, tokens: Seq[int], k: int) -> tuple[list[int], int]:
        """(up to k tokens that followed the longest suffix of ``tokens`` (min_n..max_n
        tokens) in a stored output, that suffix's length); ([], 0) when none was seen."""
        for n in range(min(self.max_n, len(tokens)), self.min_n - 1, -1):
            hit = self._last.get(tuple(tokens[len(tokens) - n :]))
            if hit is not None:
                doc_id, start = hit
                return self._by_id[doc_id][start : start + k], n
        return [], 0

    def clear(self) -> None:
        self._docs.clear()
        self._by_id.clear()
        self._last.clear()
        self._num_tokens = 0
