"""Per-request sampling parameters, validated once at the engine's door."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engine.api.errors import SamplingParamsError

MAX_LOGIT_BIAS = 100.0
"""OpenAI's range for logit_bias values: [-100, 100]."""


@dataclass(frozen=True)
class StructuredOutputs:
    """Constrains a completion token by token to one form (vLLM's ``structured_outputs``):
    exactly one of a JSON schema, any JSON object, a regex, a choice of strings, an EBNF
    grammar, or a structural tag (free text with constrained tagged sections: tool calls)."""

    json: str | None = None
    """A JSON schema, as JSON text."""
    json_object: bool = False
    """Any JSON object (OpenAI's ``response_format: json_object``)."""
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    """An EBNF grammar in xgrammar's (GBNF-like) dialect."""
    structural_tag: str | None = None
    """An xgrammar structural tag, as JSON text."""

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> StructuredOutputs:
        """A JSON schema given as a dict or as text (its property order is the output's)."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return cls(json=text)

    def kinds(self) -> list[str]:
        """The forms set (exactly one is valid)."""
        named = {
            "json": self.json is not None,
            "json_object": self.json_object,
            "regex": self.regex is not None,
            "choice": self.choice is not None,
            "grammar": self.grammar is not None,
            "structural_tag": self.structural_tag is not None,
        }
        return [k for k, on in named.items() if on]

    @property
    def key(self) -> str:
        """What the compiled grammar is cached by."""
        (kind,) = self.kinds()
        value = {
            "json": self.json,
            "json_object": "",
            "regex": self.regex,
            "choice": json.dumps(self.choice),
            "grammar": self.grammar,
            "structural_tag": self.structural_tag,
        }[kind]
        return f"{kind}:{value}"

    def validate(self) -> None:
        """Raise SamplingParamsError unless exactly one well-formed form is set."""
        kinds = self.kinds()
        if len(kinds) != 1:
            raise SamplingParamsError(
                "structured_outputs must set exactly one of json, json_object, regex, choice, "
                f"grammar or structural_tag, got {kinds or 'none'}"
            )
        if self.choice is not None and (not self.choice or any(not c for c in self.choice)):
            raise SamplingParamsError("structured_outputs choice must be non-empty strings")
        for name in ("json", "structural_tag"):
            text = getattr(self, name)
            if text is not None:
                try:
                    json.loads(text)
                except ValueError as e:
                    raise SamplingParamsError(f"structured_outputs {name} is not JSON: {e}") from e


@dataclass
class SamplingParams:
    """How one request's tokens are chosen and when its generation stops.

    Semantics follow the OpenAI API plus vLLM's extras (``top_k``, ``min_p``,
    ``repetition_penalty``, ``min_tokens``, ``ignore_eos``).
    """

    n: int = 1
    """Number of independent completions sharing the prompt's KV blocks."""
    temperature: float = 1.0
    """0 means greedy; otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose mass reaches top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 or -1 disables."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the top token's."""
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token already generated (OpenAI)."""
    frequency_penalty: float = 0.0
    """Subtracted per occurrence from the logit of generated tokens (OpenAI)."""
    repetition_penalty: float = 1.0
    """Divides positive / multiplies negative logits of prompt and output tokens (CTRL)."""
    seed: int | None = None
    """Same seed, same output, whatever else is in the batch."""
    max_tokens: int = 16
    """Upper bound on generated tokens (also capped by the context length)."""
    min_tokens: int = 0
    """EOS and stop token ids are suppressed until this many tokens exist."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends before them and they are never emitted."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Extra token ids that end generation (kept out of the text)."""
    ignore_eos: bool = False
    """Keep generating past the model's end-of-sequence token (benchmarks)."""
    logprobs: int | None = None
    """Return the sampled token's logprob plus this many top alternatives."""
    skip_special_tokens: bool = True
    """Leave special tokens out of the detokenized text."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Added to the logits of these token ids before sampling, in [-100, 100] (OpenAI)."""
    structured_outputs: StructuredOutputs | None = None
    """Constrain the output to a JSON schema, a regex, a grammar, ... (None: free text)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    @property
    def greedy(self) -> bool:
        """True when the argmax token is always chosen."""
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self) -> None:
        """Raise SamplingParamsError naming the first field out of range."""
        checks: list[tuple[bool, str]] = [
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (self.temperature >= 0.0, f"temperature must be >= 0, got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= -1, f"top_k must be -1, 0 or positive, got {self.top_k}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (
                -2.0 <= self.presence_penalty <= 2.0,
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
            ),
            (
                -2.0 <= self.frequency_penalty <= 2.0,
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
            ),
            (
                self.repetition_penalty > 0.0,
                f"repetition_penalty must be > 0, got {self.repetition_penalty}",
            ),
            (self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (
                0 <= self.min_tokens <= self.max_tokens,
                f"min_tokens must be in [0, max_tokens], got {self.min_tokens}",
            ),
            (
                self.logprobs is None or 0 <= self.logprobs <= 20,
                f"logprobs must be in [0, 20], got {self.logprobs}",
            ),
            (all(s for s in self.stop), "stop strings must be non-empty"),
            (all(t >= 0 for t in self.stop_token_ids), "stop_token_ids must be >= 0"),
            (all(t >= 0 for t in self.logit_bias), "logit_bias token ids must be >= 0"),
            (
                all(-MAX_LOGIT_BIAS <= b <= MAX_LOGIT_BIAS for b in self.logit_bias.values()),
                "logit_bias values must be in [-100, 100]",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise SamplingParamsError(message)
        if self.structured_outputs is not None:
            self.structured_outputs.validate()
