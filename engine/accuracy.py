"""Accuracy gates for reduced-precision modes: teacher-forced perplexity and top-1 agreement.

A backend scores a text through its ordinary forward pass (prefill windows over its own
paged KV pool, logits for every row), so what is measured is exactly what serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.backends import Backend, BatchInputs

# The gates every INT8 mode must pass against the float model (issue 4).
MAX_PERPLEXITY_RATIO = 1.03
MIN_TOP1_AGREEMENT = 0.90

GATE_TEXT = Path(__file__).with_name("data") / "gate_text.txt"


@dataclass(frozen=True)
class TextScore:
    """Per-token results of one teacher-forced pass over a text."""

    nll: np.ndarray  # [n - 1] negative log-likelihood of each next token
    argmax: np.ndarray  # [n - 1] the model's top-1 next token at each position

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll.mean()))


@dataclass(frozen=True)
class GateResult:
    """A reduced-precision score compared with the float reference's."""

    perplexity_ratio: float
    top1_agreement: float

    @property
    def passed(self) -> bool:
        return (
            self.perplexity_ratio <= MAX_PERPLEXITY_RATIO
            and self.top1_agreement >= MIN_TOP1_AGREEMENT
        )

    def describe(self) -> str:
        return (
            f"perplexity {100 * (self.perplexity_ratio - 1):+.2f}% (gate +"
            f"{100 * (MAX_PERPLEXITY_RATIO - 1):.0f}%), top-1 agreement "
            f"{100 * self.top1_agreement:.1f}% (gate {100 * MIN_TOP1_AGREEMENT:.0f}%)"
        )


def score_text(backend: Backend, token_ids: list[int], window: int = 512) -> TextScore:
    """Teacher-forced pass in independent windows of ``window`` tokens (each from position
    0, so every backend sees the same contexts); reallocates the backend's KV pool."""
    block_size = 16
    blocks = -(-window // block_size)
    backend.allocate_kv_cache(blocks, block_size)
    ids = np.asarray(token_ids, dtype=np.int64)
    nll, argmax = [], []
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window]
        n = len(chunk)
        if n < 2:
            break
        inputs = BatchInputs(
            token_ids=chunk,
            positions=np.arange(n, dtype=np.int64),
            slot_mapping=np.arange(n, dtype=np.int64),
            block_tables=np.arange(blocks, dtype=np.int64)[None],
            context_lens=np.array([n], dtype=np.int64),
            query_start_loc=np.array([0, n], dtype=np.int64),
            logits_indices=np.arange(n - 1, dtype=np.int64),
        )
        logits = backend.forward(inputs).float()  # [n - 1, vocab]
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.from_numpy(chunk[1:])
        nll.append(-logp.gather(1, target[:, None])[:, 0].numpy())
        argmax.append(logits.argmax(-1).numpy())
    return TextScore(np.concatenate(nll), np.concatenate(argmax))


def compare(reference: TextScore, candidate: TextScore) -> GateResult:
    """The candidate's perplexity ratio and top-1 agreement against the reference."""
    return GateResult(
        perplexity_ratio=candidate.perplexity / reference.perplexity,
        top1_agreement=float((reference.argmax == candidate.argmax).mean()),
    )
