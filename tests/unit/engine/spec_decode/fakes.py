"""A proposer whose guess the test chooses."""

from __future__ import annotations

from typing import Any


class FixedGuess:
    """Always guesses the same tokens, as continuing a repeat of ``repeat`` tokens."""

    def __init__(self, guess: list[int], repeat: int = 2) -> None:
        self.guess, self.repeat = guess, repeat

    def propose(self, tokens: Any, k: int) -> tuple[list[int], int]:
        return self.guess[:k], self.repeat

    def observe(self, prompt: Any, output: Any) -> None: ...

    def reset(self) -> None: ...
