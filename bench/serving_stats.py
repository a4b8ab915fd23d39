"""What one streamed request measured, and the figures of one sweep point built from many.

Definitions follow the field's serving benchmarks (vLLM `benchmark_serving`, guidellm):
TTFT is the time from sending the request to the first chunk carrying text; inter-token
latency (ITL) is every gap between two text chunks after it, pooled over all requests;
time per output token (TPOT) is a request's (end-to-end − TTFT) / (output tokens − 1);
goodput counts requests that met both SLOs (TTFT and TPOT) per second of the point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestResult:
    """One request as the client saw it; times in seconds from the request being sent."""

    ok: bool
    start: float = 0.0  # monotonic clock when the request was sent
    ttft: float | None = None  # first chunk with text
    e2e: float | None = None  # last byte of the stream
    chunk_gaps: list[float] = field(default_factory=list)  # between text chunks after the first
    text_chunks: int = 0  # chunks carrying text
    usage_completion_tokens: int | None = None  # from the stream's usage chunk, if sent
    usage_prompt_tokens: int | None = None
    text: str = ""
    error: str | None = None

    @property
    def output_tokens(self) -> int:
        """Tokens generated: the server's usage, else one per text chunk."""
        if self.usage_completion_tokens is not None:
            return self.usage_completion_tokens
        return self.text_chunks

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first, or None with fewer than two tokens."""
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class SLO:
    """A request is good when its TTFT and its TPOT are both within these bounds."""

    ttft_s: float
    tpot_s: float

    def met_by(self, r: RequestResult) -> bool:
        if not r.ok or r.ttft is None or r.ttft > self.ttft_s:
            return False
        tpot = r.tpot
        return tpot is None or tpot <= self.tpot_s


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation (numpy's default); None if empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _dist(values: Sequence[float], qs: Sequence[int]) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"p{q}": percentile(values, q) for q in qs}
    out["mean"] = sum(values) / len(values) if values else None
    return out


def summarize(results: Sequence[RequestResult], duration_s: float, slo: SLO) -> dict[str, Any]:
    """The figures of one sweep point from its requests and its wall time."""
    ok = [r for r in results if r.ok]
    errors = [r for r in results if not r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    good = [r for r in ok if slo.met_by(r)]
    duration = max(duration_s, 1e-9)
    prompt = [r.usage_prompt_tokens for r in ok if r.usage_prompt_tokens is not None]
    tpots = [t for t in (r.tpot for r in ok) if t is not None]
    return {
        "requests": len(results),
        "completed": len(ok),
        "errors": len(errors),
        "error_samples": sorted({r.error or "unknown" for r in errors})[:5],
        "duration_s": duration_s,
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / duration,
        "requests_per_s": len(ok) / duration,
        "prompt_tokens_mean": sum(prompt) / len(prompt) if prompt else None,
        "output_tokens_mean": out_tokens / len(ok) if ok else None,
        "token_count_source": _token_source(ok),
        "ttft_s": _dist([r.ttft for r in ok if r.ttft is not None], (50, 90, 99)),
        "itl_s": _dist([g for r in ok for g in r.chunk_gaps], (50, 99)),
        "tpot_s": _dist(tpots, (50, 99)),
        "e2e_s": _dist([r.e2e for r in ok if r.e2e is not None], (50, 99)),
        "goodput": {
            "slo_ttft_s": slo.ttft_s,
            "slo_tpot_s": slo.tpot_s,
            "good_requests": len(good),
            "requests_per_s": len(good) / duration,
            "output_tokens_per_s": sum(r.output_tokens for r in good) / duration,
            "fraction": len(good) / len(results) if results else 0.0,
        },
    }


def _token_source(ok: Sequence[RequestResult]) -> str:
    with_usage = sum(r.usage_completion_tokens is not None for r in ok)
    if with_usage == len(ok):
        return "usage"
    return "chunks" if with_usage == 0 else "mixed"
