"""Per-request sampling parameters, validated once at the engine's door."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.api.errors import SamplingParamsError


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
        ]
        for ok, message in checks:
            if not ok:
                raise SamplingParamsError(message)
