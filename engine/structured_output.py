"""Structured outputs: constraints compiled to grammars off the engine thread and cached by
their canonical form, one matcher per constrained sequence, and the token bitmask of a
step's constrained rows (cf. vLLM ``v1/structured_output``). Backed by xgrammar, vLLM's
and SGLang's default grammar engine; it is imported on the first constrained request, so an
unconstrained engine never loads it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from engine.api import InvalidRequestError, StructuredOutputs
from engine.model_source.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MAX_CACHED_GRAMMARS = 256
_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)  # bit j of a packed int32 mask word
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")  # "[12:58:14] /x/y.cc:94: "


class GrammarManager:
    """Compiles constraints for one model's vocabulary and hands out matchers."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        """``vocab_size`` is the model's (its logits' width), which may exceed the
        tokenizer's when the embedding matrix is padded."""
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._compiler: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def _compiler_now(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr
                from transformers import PreTrainedTokenizerFast

                hf = PreTrainedTokenizerFast(tokenizer_object=self.tokenizer.backend)
                info = xgr.TokenizerInfo.from_huggingface(
                    hf, vocab_size=self.vocab_size, stop_token_ids=self.tokenizer.eos_token_ids
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def compile(self, spec: StructuredOutputs) -> Any:
        """The compiled grammar of ``spec`` (cached); InvalidRequestError naming the problem
        for a schema, regex or grammar the engine cannot enforce. Slow the first time:
        call it off the engine thread."""
        key = spec.key
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = self._compile(spec)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > MAX_CACHED_GRAMMARS:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, spec: StructuredOutputs) -> Any:
        compiler = self._compiler_now()
        (kind,) = spec.kinds()
        try:
            if spec.json is not None:
                # compact separators: a small model cannot run away in whitespace
                return compiler.compile_json_schema(spec.json, any_whitespace=False)
            if spec.json_object:  # an object (the builtin JSON grammar allows any value)
                return compiler.compile_json_schema(
                    '{"type": "object"}', any_whitespace=False, strict_mode=False
                )
            if spec.regex is not None:
                return compiler.compile_regex(spec.regex)
            if spec.choice is not None:
                alternatives = " | ".join(json.dumps(c) for c in spec.choice)
                return compiler.compile_grammar(f"root ::= {alternatives}")
            if spec.grammar is not None:
                return compiler.compile_grammar(spec.grammar)
            assert spec.structural_tag is not None
            return compiler.compile_structural_tag(spec.structural_tag)
        except Exception as e:  # xgrammar's errors name the unsupported feature
            text = str(e).strip()
            message = _SOURCE_PREFIX.sub("", text.splitlines()[0]) if text else type(e).__name__
            raise InvalidRequestError(
                f"structured_outputs {kind} cannot be enforced: {message}"
            ) from e

    def matcher(self, spec: StructuredOutputs) -> Any:
        """A fresh matcher (one per sequence) over the compiled grammar."""
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compile(spec))


def fill_bitmask(matchers: Sequence[Any], vocab_size: int) -> torch.Tensor:
    """The allowed-token mask of each matcher's next token: [rows, vocab_size] bool."""
    import xgrammar as xgr

    packed = xgr.allocate_token_bitmask(len(matchers), vocab_size)  # [rows, ceil(V/32)] int32
    for row, matcher in enumerate(matchers):
        matcher.fill_next_token_bitmask(packed, row)
    bits = (packed.unsqueeze(-1) >> _BIT_SHIFTS) & 1  # [rows, words, 32], bit j of word w = 32w + j
    return bits.view(len(matchers), -1)[:, :vocab_size].bool()
