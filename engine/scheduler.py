"""Iteration-level scheduling: who runs this step, with how many tokens each."""

from __future__ import annotations

import bisect
import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.api import FinishReason, QueueFullError, TokenLogprob
from engine.config import SchedulerConfig
from engine.kv_cache import KVCacheManager
from engine.sequence import Sequence, SequenceStatus
from engine.spec_decode.speculator import Speculator


class SchedulingPolicy(str, enum.Enum):
    """Order of admission from the waiting queue."""

    FCFS = "fcfs"
    PRIORITY = "priority"  # lower priority value first, then arrival


@dataclass
class ScheduledSequence:
    """One sequence's share of a step: feed ``num_new_tokens`` tokens from ``start``; a
    speculating sequence's last ``len(guess)`` of them are guessed tokens to verify."""

    seq: Sequence
    start: int  # num_computed_tokens when scheduled
    num_new_tokens: int
    block_ids: list[int]
    guess: list[int] = field(default_factory=list)
    samples: bool = field(init=False)
    """True when this chunk reaches the sequence's end, so a token is sampled."""

    def __post_init__(self) -> None:
        self.samples = self.start + self.num_new_tokens == self.seq.num_tokens + len(self.guess)

    @property
    def token_ids(self) -> list[int]:
        """The tokens this step feeds (the guess after the sequence's own)."""
        own = self.seq.all_token_ids[self.start : self.start + self.num_new_tokens]
        return own + self.guess if self.guess else own


@dataclass
class SchedulerOutput:
    """Plain data handed to the runner."""

    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class SampledToken:
    """The runner's result for one sequence that reached its end this step (a speculating
    sequence has one per emitted token, in order)."""

    seq_id: int
    token_id: int
    logprob: TokenLogprob | None = None


@dataclass
class RunnerOutput:
    """What one execute() returns: one sampled token per sampling sequence."""

    sampled: list[SampledToken] = field(default_factory=list)
    forward_seconds: float = 0.0


@dataclass
class SequenceUpdate:
    """One sequence's progress in a step, for output processing."""

    seq: Sequence
    new_token_ids: list[int]
    finished: bool


class Scheduler:
    """Continuous batching under a token budget, with chunked prefill and preemption."""

    def __init__(
        self, config: SchedulerConfig, kv: KVCacheManager, speculator: Speculator | None = None
    ) -> None:
        self.config = config
        self.speculator = speculator
        self.policy = SchedulingPolicy(config.policy)
        self.kv = kv
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._arrival_order = 0
        self.num_preemptions = 0
        self._keys: dict[int, tuple[int, float, int]] = {}

    # ---- admission -------------------------------------------------------
    def add(self, seqs: list[Sequence]) -> None:
        """Queue a request's sequences together, or refuse them all at once."""
        if len(self.waiting) + len(seqs) > self.config.max_waiting:
            raise QueueFullError(
                f"waiting queue full ({len(self.waiting)}/{self.config.max_waiting})"
            )
        for seq in seqs:
            self._arrival_order += 1
            self._keys[seq.seq_id] = (self._priority(seq), seq.timings.arrival, self._arrival_order)
            self._enqueue(seq)

    def _priority(self, seq: Sequence) -> int:
        return seq.priority if self.policy is SchedulingPolicy.PRIORITY else 0

    def _enqueue(self, seq: Sequence) -> None:
        # Sorted by (priority, arrival): preempted sequences keep their place in line.
        keys = [self._keys[s.seq_id] for s in self.waiting]
        self.waiting.insert(bisect.bisect_right(keys, self._keys[seq.seq_id]), seq)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # ---- one step --------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Pick this step's sequences and token counts, allocating their KV slots."""
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        now = time.monotonic()
        speculate = self.speculator is not None and self.speculator.active(len(self.running))
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = self._chunk(seq.num_tokens - seq.num_computed_tokens, budget)
            guess = self._guess(seq, n, budget, len(self.running) - i) if speculate else []
            # Without room for the guess, the sequence's own token is scheduled as usual.
            if guess and self.kv.allocate_slots(seq, n + len(guess)) is not None:
                out.scheduled.append(
                    ScheduledSequence(seq, seq.num_computed_tokens, n + len(guess), [], guess)
                )
                budget -= n + len(guess)
                i += 1
                continue
            while self.kv.allocate_slots(seq, n) is None:
                victim = self._pick_victim(i)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # seq preempted itself; running[i] is now the next one
            out.scheduled.append(ScheduledSequence(seq, seq.num_computed_tokens, n, []))
            budget -= n
            i += 1
        if not out.preempted:
            budget = self._admit(out, budget, now)
        for s in out.scheduled:
            s.block_ids = self.kv.block_ids(s.seq.seq_id)
        return out

    def _guess(self, seq: Sequence, n: int, budget: int, unscheduled: int) -> list[int]:
        """The speculator's guess for a decoding sequence (one token left to feed), with
        ``unscheduled`` running sequences left in this step, ``seq`` included."""
        assert self.speculator is not None
        if n != 1:
            return []
        # The step's rows so far: what is scheduled, plus one for each sequence left.
        rows = self.config.max_num_batched_tokens - budget + unscheduled
        return self.speculator.guess(seq, budget, rows)

    def _chunk(self, remaining: int, budget: int) -> int:
        n = min(remaining, budget)
        if self.config.long_prefill_token_threshold > 0:
            n = min(n, self.config.long_prefill_token_threshold)
        return n

    def _admit(self, out: SchedulerOutput, budget: int, now: float) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            hits, num_hit = self.kv.get_computed_blocks(seq)
            n = self._chunk(seq.num_tokens - num_hit, budget)
            if self.kv.allocate_slots(seq, n, hits) is None:
                break  # no room until someone finishes
            self.waiting.pop(0)
            seq.status = SequenceStatus.RUNNING
            seq.num_computed_tokens = num_hit
            if seq.timings.first_scheduled is None:
                seq.timings.first_scheduled = now
                seq.num_cached_tokens = num_hit
            self.running.append(seq)
            out.scheduled.append(ScheduledSequence(seq, num_hit, n, []))
            budget -= n
        return budget

    def _pick_victim(self, current: int) -> Sequence:
        # Only sequences not yet scheduled this step (index >= current) may be preempted.
        candidates = self.running[current:]
        return max(candidates, key=lambda s: self._keys[s.seq_id])

    def _preempt(self, seq: Sequence) -> None:
        """Free the sequence's KV and send it back to wait; it will recompute."""
        self.running.remove(seq)
        self.kv.free(seq)
        seq.status = SequenceStatus.PREEMPTED
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._enqueue(seq)

    def update(self, out: SchedulerOutput, result: RunnerOutput) -> list[SequenceUpdate]:
        """Advance computed counts, append sampled tokens, finish what must stop. A speculating
        sequence keeps the KV of its own token and of the guessed tokens it accepted; the
        slots of rejected guesses are handed back."""
        now = time.monotonic()
        sampled_by_seq: dict[int, list[SampledToken]] = {}
        for sampled in result.sampled:
            sampled_by_seq.setdefault(sampled.seq_id, []).append(sampled)
        updates = []
        for s in out.scheduled:
            seq = s.seq
            seq.num_computed_tokens += s.num_new_tokens - len(s.guess)
            emitted = sampled_by_seq.get(seq.seq_id, [])
            if s.guess and not seq.is_finished:
                accepted = len(emitted) - 1  # the emitted guesses' KV is in the cache
                seq.num_computed_tokens += accepted
                self.kv.trim(seq, seq.num_computed_tokens)
                assert self.speculator is not None
                self.speculator.verified(seq, len(s.guess), accepted)
            if emitted and not seq.is_finished:  # not aborted while the step ran
                updates.append(self._append(seq, emitted, now))
        return updates

    def _append(self, seq: Sequence, emitted: list[SampledToken], now: float) -> SequenceUpdate:
        """Append a sequence's emitted tokens in order, up to the first that finishes it."""
        new: list[int] = []
        reason = None
        for sampled in emitted:
            seq.append_token(sampled.token_id, sampled.logprob, now)
            new.append(sampled.token_id)
            reason = seq.check_stop_token()
            if seq.grammar is not None and not seq.grammar.accept_token(sampled.token_id):
                # no allowed token was left (e.g. the grammar's end suppressed by min_tokens)
                reason = reason or FinishReason.STOP
            if reason is not None:
                self.finish(seq, reason)
                break
        return SequenceUpdate(seq, new, reason is not None)

    # ---- endings ---------------------------------------------------------
    def finish(
        self, seq: Sequence, reason: FinishReason, stop_reason: str | int | None = None
    ) -> None:
        """End a sequence now and return its blocks to the pool; ``stop_reason`` is the stop
        string that ended it, when the caller found one."""
        if seq.is_finished:
            return
        if stop_reason is not None:
            seq.stop_reason = stop_reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq)
        if self.speculator is not None:
            self.speculator.finished(seq, learn=reason is not FinishReason.ABORT)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.timings.finished = time.monotonic()
        self._keys.pop(seq.seq_id, None)

    def abort(self, seqs: Iterable[Sequence]) -> None:
        """Drop sequences (client gone, deadline passed), freeing their blocks at once."""
        for seq in seqs:
            self.finish(seq, FinishReason.ABORT)
