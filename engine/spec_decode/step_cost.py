"""What a step that checks guesses costs: the time of a decode step by the rows it feeds, as a
multiple of a one-row step, measured on the backend at start-up.

On 2 CPU cores each extra row costs a fifth to a third of a plain step (the int8 kernels are
bound by arithmetic there); on a GPU a few extra rows cost almost nothing. How many guessed
tokens pay off follows from that curve (engine.spec_decode.speculator), so it is measured on
the machine the engine runs on instead of assumed.
"""

from __future__ import annotations

import statistics

import numpy as np

from engine.backend_choice import step_seconds
from engine.backends import Backend, BatchInputs

_CONTEXT = 256  # tokens already cached before the measured rows (a short chat's context)
_REPEATS = 9


def decode_rows_inputs(seqs: int, rows: int, context: int, block_size: int) -> BatchInputs:
    """``seqs`` sequences of ``context`` cached tokens, each fed ``rows`` tokens as one-token
    decode entries, as the engine verifies guesses (rows = 1: a plain decode step; 1 + k: a
    step checking k guesses). Sequence s owns its own run of blocks from block 0 on."""
    blocks_per_seq = -(-(context + rows) // block_size)
    pos, slots, lens, tables = [], [], [], []
    for s in range(seqs):
        table = np.arange(s * blocks_per_seq, (s + 1) * blocks_per_seq, dtype=np.int64)
        for p in range(context, context + rows):
            pos.append(p)
            slots.append(table[p // block_size] * block_size + p % block_size)
            tables.append(table)
            lens.append(p + 1)
    return BatchInputs(
        token_ids=np.zeros(len(pos), dtype=np.int64),  # the ids do not change the time
        positions=np.asarray(pos, dtype=np.int64),
        slot_mapping=np.asarray(slots, dtype=np.int64),
        block_tables=np.stack(tables),
        context_lens=np.asarray(lens, dtype=np.int64),
        query_start_loc=np.arange(len(pos) + 1, dtype=np.int64),
        logits_indices=np.arange(len(pos), dtype=np.int64),
    )


class StepCosts:
    """Relative step times by rows: ``ratios[r - 1]`` is a step of r rows against a step of
    one. Beyond the measured rows the last measured slope continues."""

    def __init__(self, ratios: list[float]) -> None:
        if not ratios or ratios[0] != 1.0:
            raise ValueError("step costs start with the one-row step, 1.0")
        # Timings are noisy; a step of more rows never costs less than one of fewer.
        self.ratios: list[float] = np.maximum.accumulate(np.asarray(ratios, float)).tolist()

    @classmethod
    def linear(cls, per_row: float, rows: int) -> StepCosts:
        """Each row after the first adds ``per_row`` of a one-row step."""
        return cls([1.0 + per_row * r for r in range(rows)])

    def __call__(self, rows: int) -> float:
        """A step of ``rows`` rows in one-row steps."""
        known = len(self.ratios)
        if rows <= known:
            return self.ratios[max(rows, 1) - 1]
        slope = self.ratios[-1] - self.ratios[-2] if known > 1 else 0.0
        return self.ratios[-1] + slope * (rows - known)

    @property
    def per_row(self) -> float:
        """The mean extra cost of a row over the measured range (for banners)."""
        known = len(self.ratios)
        return (self.ratios[-1] - 1.0) / (known - 1) if known > 1 else 0.0


def measure_step_costs(
    backend: Backend, max_rows: int, block_size: int, pool_tokens: int
) -> StepCosts:
    """Step times of one sequence fed 1..max_rows rows after up to _CONTEXT cached tokens, on
    the backend's current pool (blocks from 0 on, ``pool_tokens`` tokens of them: warm-up's
    scratch pool), as multiples of the one-row step: the median of _REPEATS rounds, each
    timing every row count once, so a machine whose speed drifts while it measures (shared
    cores) moves every row count alike instead of bending the curve. A pool too small for
    every row count measures what fits; StepCosts extends the curve."""
    rows_measured = max(1, min(max_rows, pool_tokens))
    context = max(0, min(_CONTEXT, pool_tokens - rows_measured))
    inputs = [
        decode_rows_inputs(1, rows, context, block_size) for rows in range(1, rows_measured + 1)
    ]
    for batch in inputs:
        backend.forward(batch)  # warm
    times: list[list[float]] = [[] for _ in inputs]
    for _ in range(_REPEATS):
        for batch, row_times in zip(inputs, times, strict=True):
            row_times.append(step_seconds(backend, batch))
    medians = [statistics.median(t) for t in times]
    return StepCosts([m / medians[0] for m in medians])
