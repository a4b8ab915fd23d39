"""Incremental detokenization: one sequence's tokens in, safe text deltas out.

Two things are held back until they are settled: text that ends in U+FFFD (the
decoder's stand-in for an incomplete UTF-8 byte sequence, e.g. the first byte
tokens of an emoji) and a suffix that could be the start of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"

# Prompt tokens decoded before the first output token, so that tokenizers which
# drop or merge leading spaces (SentencePiece "▁", byte-level BPE) get them right.
PROMPT_WINDOW = 5


class TokenDecoder(Protocol):
    """The two tokenizer operations the detokenizer needs."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ids; an incomplete UTF-8 sequence decodes to U+FFFD."""
        ...

    def is_special(self, token_id: int) -> bool:
        """True for control tokens such as BOS/EOS."""
        ...


class IncrementalDetokenizer:
    """Turns one sequence's tokens into text deltas.

    Never emits a broken UTF-8 sequence and never emits any part of a stop string.
    Uses vLLM's prefix/read offsets: each step decodes only a small window of
    recent tokens, so the work per token does not grow with the output.
    """

    def __init__(
        self,
        tokenizer: TokenDecoder,
        prompt_token_ids: Sequence[int],
        stop: Sequence[str] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        """Seed the decode window with the prompt's last tokens; stop strings must be non-empty."""
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._stop = tuple(s for s in stop if s)
        # Window of tokens; [prefix_offset, read_offset) was decoded and emitted already
        # and is decoded again only as context for the tokens after read_offset.
        self._tokens: list[int] = list(prompt_token_ids[-PROMPT_WINDOW:])
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)
        self._prefix_text: str | None = None  # decode of the prefix range, cached
        self._pending = ""  # decoded text held back as a possible stop-string start
        self._emitted: list[str] = []
        self._stop_reason: str | None = None
        self._finished = False

    @property
    def stop_reason(self) -> str | None:
        """The stop string that matched, once one has; the sequence must then end."""
        return self._stop_reason

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._emitted)

    def add_token(self, token_id: int) -> str:
        """Take the next generated token; return the text that is safe to emit now."""
        if self._finished:
            return ""
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""  # decodes to nothing; keeping it out of the window saves a decode
        self._tokens.append(token_id)
        return self._release(self._decode_new(), final=False)

    def finish(self) -> str:
        """End generation for another reason (length, EOS): return the held-back text.

        Trailing U+FFFD of an unfinished byte sequence is dropped; nothing past a stop
        string is returned.
        """
        if self._finished:
            return ""
        self._finished = True
        new_text = self._decode_window()[len(self._prefix_text_cached()) :]
        return self._release(new_text.rstrip(REPLACEMENT_CHAR), final=True)

    def _decode_window(self) -> str:
        return self._tokenizer.decode(
            self._tokens[self._prefix_offset :], skip_special_tokens=self._skip_special
        )

    def _prefix_text_cached(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._tokenizer.decode(
                self._tokens[self._prefix_offset : self._read_offset],
                skip_special_tokens=self._skip_special,
            )
        return self._prefix_text

    def _decode_new(self) -> str:
        """Text of the tokens after read_offset, or "" while it is not yet complete."""
        prefix_text = self._prefix_text_cached()
        full_text = self._decode_window()
        if len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT_CHAR):
            return ""  # mid-character (or no visible text yet): wait for more tokens
        # The emitted tokens become the next step's context; older ones are dropped
        # so the window (and the work per token) stays small.
        del self._tokens[: self._read_offset]
        self._prefix_offset, self._read_offset = 0, len(self._tokens)
        self._prefix_text = None
        return full_text[len(prefix_text) :]

    def _release(self, new_text: str, final: bool) -> str:
        """Append new_text to the held text; emit all of it that cannot start a stop string."""
        buffer = self._pending + new_text
        match = self._find_stop(buffer)
        if match is not None:
            position, stop = match
            self._stop_reason = stop
            self._finished = True
            self._pending = ""
            return self._emit(buffer[:position])
        held = 0 if final else self._stop_prefix_length(buffer)
        self._pending = buffer[len(buffer) - held :]
        return self._emit(buffer[: len(buffer) - held])

    def _find_stop(self, buffer: str) -> tuple[int, str] | None:
        """Earliest stop string in buffer as (position, stop); the emitted text holds none."""
        best: tuple[int, str] | None = None
        for stop in self._stop:
            position = buffer.find(stop)
            if position >= 0 and (best is None or position < best[0]):
                best = (position, stop)
        return best

    def _stop_prefix_length(self, buffer: str) -> int:
        """Length of the longest suffix of buffer that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop:
            for length in range(min(len(buffer), len(stop) - 1), longest, -1):
                if stop.startswith(buffer[-length:]):
                    longest = length
                    break
        return longest

    def _emit(self, delta: str) -> str:
        if delta:
            self._emitted.append(delta)
        return delta
