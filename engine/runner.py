"""Turns a scheduler output into flat backend inputs, runs the backend, samples."""

from __future__ import annotations

import time

import numpy as np

from engine.api import TokenLogprob
from engine.backends import Backend, BatchInputs
from engine.sampler import Sampler, SamplingBatch
from engine.scheduler import RunnerOutput, SampledToken, ScheduledSequence, SchedulerOutput
from engine.spec_decode.verify import accepted_prefix
from engine.structured_output import fill_bitmask


def build_batch_inputs(scheduled: list[ScheduledSequence], block_size: int) -> BatchInputs:
    """Flatten the scheduled chunks: one row per token, one entry per sequence.

    A speculating sequence is one entry per fed token instead, each a one-token decode over
    the sequence's blocks with the context up to and including itself: every backend then
    verifies guesses on its decode path (the native decode stack included), and each row
    yields the logits its position needs."""
    token_ids: list[int] = []
    positions: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    context_lens, query_start, logits_indices = [], [0], []
    max_blocks = max((len(s.block_ids) for s in scheduled), default=0)
    num_entries = sum(1 + len(s.guess) for s in scheduled)
    block_tables = np.zeros((num_entries, max(max_blocks, 1)), dtype=np.int64)
    entry = 0
    for s in scheduled:
        end = s.start + s.num_new_tokens
        token_ids.extend(s.token_ids)
        pos = np.arange(s.start, end, dtype=np.int64)
        table = np.asarray(s.block_ids, dtype=np.int64)
        positions.append(pos)
        slots.append(table[pos // block_size] * block_size + pos % block_size)
        if s.guess:  # one decode entry per fed token
            for p in range(s.start, end):
                block_tables[entry, : len(table)] = table
                context_lens.append(p + 1)
                query_start.append(query_start[-1] + 1)
                logits_indices.append(query_start[-1] - 1)
                entry += 1
            continue
        block_tables[entry, : len(table)] = table
        entry += 1
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
        """Run the step and return the sampled tokens of every sequence that reached its end:
        one each, or for a speculating sequence its accepted guesses and one more
        (engine/spec_decode/verify.py)."""
        if out.is_empty:
            return RunnerOutput()
        inputs = build_batch_inputs(out.scheduled, self.block_size)
        t0 = time.perf_counter()
        logits = self.backend.forward(inputs)  # [sampling rows, vocab]
        forward_seconds = time.perf_counter() - t0
        chunks = [s for s in out.scheduled if s.samples]
        if not chunks:
            return RunnerOutput(forward_seconds=forward_seconds)
        # One row per sampled position: a speculating sequence's row j sees its guess[:j] as
        # output already (penalties count it), and draws from its own generator in order.
        rows = [(s.seq, s.guess[:j]) for s in chunks for j in range(len(s.guess) + 1)]
        batch = SamplingBatch(
            params=[seq.params for seq, _ in rows],
            generators=[seq.generator for seq, _ in rows],
            prompt_token_ids=[seq.prompt_token_ids for seq, _ in rows],
            output_token_ids=[seq.output_token_ids + g if g else seq.output_token_ids
                              for seq, g in rows],
            suppressed_token_ids=[seq.suppressed_token_ids() for seq, _ in rows],
        )  # fmt: skip
        constrained = [i for i, (seq, _) in enumerate(rows) if seq.grammar is not None]
        if constrained:  # an unconstrained batch skips this entirely (never speculating)
            batch.allowed_rows = constrained
            grammars = [rows[i][0].grammar for i in constrained]
            batch.allowed = fill_bitmask(grammars, logits.shape[-1])
        rewind = {s.seq.seq_id: s.seq.generator.get_state() for s in chunks
                  if s.guess and s.seq.generator is not None}  # fmt: skip
        result = self.sampler.sample(logits, batch)
        sampled, row = [], 0
        for s in chunks:
            positions = range(row, row + len(s.guess) + 1)
            tokens = accepted_prefix(s.guess, [result.token_ids[i] for i in positions])
            for i, token in zip(positions, tokens, strict=False):
                lp, top = result.logprobs[i], result.top_logprobs[i]
                logprob = TokenLogprob(lp, top or []) if lp is not None else None
                sampled.append(SampledToken(s.seq.seq_id, token, logprob))
            if s.seq.seq_id in rewind:
                self.sampler.rewind(s.seq, rewind[s.seq.seq_id], len(tokens))
            row += len(s.guess) + 1
        return RunnerOutput(sampled=sampled, forward_seconds=forward_seconds)
