"""The scheduler's side of speculation: when a sequence guesses, how many tokens, and what
the verified guesses teach (per-request guess length, proposers that learn, the counters)."""

from __future__ import annotations

from engine.config import SpeculativeConfig
from engine.sequence import Sequence
from engine.spec_decode.proposers import Proposer
from engine.spec_decode.verify import SpecStats


class PaybackGate:
    """Whether speculation pays at a batch size, measured while serving (``--speculative-
    disable-by-batch-size auto``).

    Per batch size B (running sequences of a decode-only step) it keeps a moving average of
    the forward seconds per output token of steps that checked guesses and of plain steps.
    Speculation runs at B while its steps make tokens at least as fast; else it pauses there,
    and every ``probe_every`` steps at B the other kind of step runs once, so both averages
    stay current as the workload changes. Where one of them is not yet known, the next step
    measures it: speculation first, then a plain step.
    The decision never changes outputs (verification keeps only the model's own tokens),
    only their speed.
    """

    def __init__(self, probe_every: int = 32, weight: float = 0.25) -> None:
        self.probe_every = probe_every
        self.weight = weight
        self._per_token: dict[tuple[int, bool], float] = {}  # (B, guessed) -> seconds/token
        self._since_probe: dict[int, int] = {}

    def allows(self, batch: int) -> bool:
        spec = self._per_token.get((batch, True))
        plain = self._per_token.get((batch, False))
        n = self._since_probe.get(batch, 0) + 1
        self._since_probe[batch] = n
        if spec is None:
            return True  # not measured yet: guesses first,
        if plain is None:
            return False  # then a plain step
        better = spec <= plain
        if n >= self.probe_every:  # now and then, the other kind of step
            self._since_probe[batch] = 0
            return not better
        return better

    def record(self, batch: int, guessed: bool, tokens: int, seconds: float) -> None:
        """One decode-only step of ``batch`` sequences that emitted ``tokens`` tokens."""
        if tokens <= 0 or seconds <= 0:
            return
        key, value = (batch, guessed), seconds / tokens
        old = self._per_token.get(key)
        self._per_token[key] = value if old is None else old + self.weight * (value - old)

    def pays(self, batch: int) -> bool | None:
        """Whether speculation currently pays at ``batch`` (None: not measured yet)."""
        spec = self._per_token.get((batch, True))
        plain = self._per_token.get((batch, False))
        return None if spec is None or plain is None else spec <= plain


class Speculator:
    """Guesses for decoding sequences, with a guess length that follows each request's luck:
    one more than it last had accepted, up to num_speculative_tokens (a fully accepted guess
    grows by one; a rejected one drops to a single token)."""

    def __init__(self, config: SpeculativeConfig, proposer: Proposer) -> None:
        self.config = config
        self.proposer = proposer
        # A count for every position a guess may reach (0..k-1) from the start, so the
        # per-position series exist before the longest guess is made.
        self.stats = SpecStats(accepted_per_position=[0] * config.num_speculative_tokens)
        self._next_len: dict[int, int] = {}
        self.gate = PaybackGate() if config.disable_by_batch_size == "auto" else None

    def active(self, num_running: int) -> bool:
        """Whether this step speculates: not when the batch alone is big enough to keep the
        CPU busy (verifying guesses then costs more than it saves), by the measured gate or
        the configured limit."""
        if self.gate is not None:
            return self.gate.allows(num_running)
        limit = self.config.disable_by_batch_size
        return limit == 0 or num_running <= int(limit)

    def step_done(self, batch: int, guessed: bool, tokens: int, seconds: float) -> None:
        """A decode-only step of ``batch`` sequences ran (for the measured gate)."""
        if self.gate is not None:
            self.gate.record(batch, guessed, tokens, seconds)

    def guess(self, seq: Sequence, budget: int) -> list[int]:
        """Guessed next tokens of a decoding sequence, within the step's token ``budget`` (its
        own token included) and its length limits; [] where it must not guess: constrained by
        a grammar, or still below min_tokens (EOS is suppressed position by position there)."""
        p = seq.params
        if seq.grammar is not None or seq.num_output_tokens < p.min_tokens:
            return []
        room = min(
            self._next_len.get(seq.seq_id, self.config.num_speculative_tokens),
            budget - 1,
            p.max_tokens - seq.num_output_tokens - 1,
            seq.max_total_tokens - seq.num_tokens - 1,
        )
        if room < 1:
            return []
        return self.proposer.propose(seq.all_token_ids, room)

    def verified(self, seq: Sequence, num_guessed: int, num_accepted: int) -> None:
        self.stats.record(num_guessed, num_accepted)
        self._next_len[seq.seq_id] = min(self.config.num_speculative_tokens, num_accepted + 1)

    def finished(self, seq: Sequence, learn: bool) -> None:
        """A sequence ended; a proposer that learns remembers its output unless aborted."""
        self._next_len.pop(seq.seq_id, None)
        if learn and seq.output_token_ids:
            self.proposer.observe(seq.prompt_token_ids, seq.output_token_ids)
