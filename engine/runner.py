"""Turns a scheduler output into flat backend inputs, runs the backend, samples."""

from __future__ import annotations

import time

import numpy as np

from engine.api import TokenLogprob
from engine.backends import Backend, BatchInputs
from engine.sampler import Sampler, SamplingBatch
from engine.scheduler import RunnerOutput, SampledToken, ScheduledSequence, SchedulerOutput
from engine.structured_output import fill_bitmask


def build_batch_inputs(scheduled: list[ScheduledSequence], block_size: int) -> BatchInputs:
    """Flatten the scheduled chunks: one row per token, one entry per sequence."""
    token_ids: list[int] = []
    positions: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    context_lens, query_start, logits_indices = [], [0], []
    max_blocks = max((len(s.block_ids) for s in scheduled), default=0)
    block_tables = np.zeros((len(scheduled), max(max_blocks, 1)), dtype=np.int64)
    for i, s in enumerate(scheduled):
        end = s.start + s.num_new_tokens
        token_ids.extend(s.seq.all_token_ids[s.start : end])
        pos = np.arange(s.start, end, dtype=np.int64)
        table = np.asarray(s.block_ids, dtype=np.int64)
        block_tables[i, : len(table)] = table
        positions.append(pos)
        slots.append(table[pos // block_size] * block_size + pos % block_size)
        context_lens.append(end)
        query_start.append(query_start[-1] + s.num_new_tokens)
        if s.samples:
            logits_indices.append(query_start[-1] - 1)
    return BatchInputs(
        token_ids=np.asarray(token_ids, dtype=np.int64),
        positions=np.concatenate(positions) if positions else np.zeros(0, np.int64),
        slot_mapping=np.concatenate(slots) if slots else np.zeros(0, np.int64),
        block_tables=block_tables,
        context_lens=np.asarray(context_lens, dtype=np.int64),
        query_start_loc=np.asarray(query_start, dtype=np.int64),
        logits_indices=np.asarray(logits_indices, dtype=np.int64),
    )


class ModelRunner:
    """Executes one scheduler output on a backend: inputs, forward, sampling."""

    def __init__(self, backend: Backend, block_size: int, sampler: Sampler | None = None) -> None:
        self.backend = backend
        self.block_size = block_size
        self.sampler = sampler or Sampler()

    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        """Run the step and return one sampled token per sequence that reached its end."""
        if out.is_empty:
            return RunnerOutput()
        inputs = build_batch_inputs(out.scheduled, self.block_size)
        t0 = time.perf_counter()
        logits = self.backend.forward(inputs)  # [num_sampling_seqs, vocab]
        forward_seconds = time.perf_counter() - t0
        seqs = [s.seq for s in out.scheduled if s.samples]
        if not seqs:
            return RunnerOutput(forward_seconds=forward_seconds)
        batch = SamplingBatch(
            params=[s.params for s in seqs],
            generators=[s.generator for s in seqs],
            prompt_token_ids=[s.prompt_token_ids for s in seqs],
            output_token_ids=[s.output_token_ids for s in seqs],
            suppressed_token_ids=[s.suppressed_token_ids() for s in seqs],
        )
        constrained = [i for i, s in enumerate(seqs) if s.grammar is not None]
        if constrained:  # an unconstrained batch skips this entirely
            batch.allowed_rows = constrained
            batch.allowed = fill_bitmask([seqs[i].grammar for i in constrained], logits.shape[-1])
        result = self.sampler.sample(logits, batch)
        sampled = []
        for i, seq in enumerate(seqs):
            lp = result.logprobs[i]
            top = result.top_logprobs[i]
            logprob = TokenLogprob(lp, top or []) if lp is not None else None
            sampled.append(SampledToken(seq.seq_id, result.token_ids[i], logprob))
        return RunnerOutput(sampled=sampled, forward_seconds=forward_seconds)
