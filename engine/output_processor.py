"""Per-request bookkeeping after each step: detokenize, find stop strings, build outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.api import CompletionDelta, FinishReason, RequestOutput, RequestTimings
from engine.detokenizer import IncrementalDetokenizer
from engine.scheduler import SequenceUpdate
from engine.sequence import Sequence


@dataclass
class RequestState:
    """A live request: its sequences and one detokenizer per sequence."""

    request_id: str
    seqs: list[Sequence]
    detokenizers: list[IncrementalDetokenizer]
    arrival: float
    logprobs_sent: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)


@dataclass(frozen=True)
class SequenceStop:
    """A sequence whose text reached one of its stop strings: the engine finishes it."""

    seq: Sequence
    reason: FinishReason
    stop_reason: str | int | None  # the stop string that matched


@dataclass
class ProcessedStep:
    """One step's detokenized progress: each changed request's deltas, and the sequences
    that must stop (applied by the engine before the outputs are built)."""

    deltas: dict[str, list[CompletionDelta]] = field(default_factory=dict)
    stops: list[SequenceStop] = field(default_factory=list)


class OutputProcessor:
    """Turns sequence updates into request outputs; stop strings found here go back to the
    engine as data (ProcessedStep.stops), which finishes those sequences."""

    def __init__(self) -> None:
        self.requests: dict[str, RequestState] = {}

    def add(self, state: RequestState) -> None:
        state.logprobs_sent = [0] * len(state.seqs)
        self.requests[state.request_id] = state

    def process(self, updates: list[SequenceUpdate]) -> ProcessedStep:
        """Detokenize this step's tokens and find the sequences that hit a stop string."""
        step = ProcessedStep()
        for upd in updates:
            state = self.requests.get(upd.seq.request_id)
            if state is None:
                continue
            delta = self._delta(state, upd, step.stops)
            step.deltas.setdefault(state.request_id, []).append(delta)
        return step

    def request_outputs(self, step: ProcessedStep) -> list[RequestOutput]:
        """One RequestOutput per request that changed in ``step``, once its stops are applied;
        finished requests are forgotten."""
        outputs = [self._output(self.requests[rid], deltas) for rid, deltas in step.deltas.items()]
        for out in outputs:
            if out.finished:
                del self.requests[out.request_id]
        return outputs

    def _delta(
        self, state: RequestState, upd: SequenceUpdate, stops: list[SequenceStop]
    ) -> CompletionDelta:
        seq = upd.seq
        detok = state.detokenizers[seq.index]
        # A token that ended the sequence by itself (EOS, a stop token id) stays out of the text.
        ended_by_token = seq.is_finished and seq.finish_reason is FinishReason.STOP
        feed = upd.new_token_ids[:-1] if ended_by_token else upd.new_token_ids
        text = ""
        for kept, token in enumerate(feed, 1):
            text += detok.add_token(token)
            if detok.stop_reason is not None and kept < len(upd.new_token_ids):
                # A stop string ended the text before this step's last token (speculation
                # emits several): the tokens after it were never generated.
                seq.drop_last_tokens(len(upd.new_token_ids) - kept)
                upd.new_token_ids = upd.new_token_ids[:kept]
                break
        finish_reason, stop_reason = None, None
        if seq.is_finished:
            finish_reason, stop_reason = seq.finish_reason, seq.stop_reason
            if seq.finish_reason is not None and detok.stop_reason is None:
                text += detok.finish()
        elif detok.stop_reason is not None:
            finish_reason, stop_reason = FinishReason.STOP, detok.stop_reason
            stops.append(SequenceStop(seq, finish_reason, stop_reason))
        sent = state.logprobs_sent[seq.index]
        state.logprobs_sent[seq.index] = len(seq.output_logprobs)
        return CompletionDelta(
            index=seq.index,
            token_ids=list(upd.new_token_ids),
            text=text,
            logprobs=seq.output_logprobs[sent:],
            finish_reason=finish_reason,
            stop_reason=stop_reason,
        )

    def abort_outputs(self, request_id: str) -> RequestOutput | None:
        """Final output for an aborted request (its sequences already finished)."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return None
        deltas = [
            CompletionDelta(s.index, [], "", [], FinishReason.ABORT, None)
            for s in state.seqs
            if s.finish_reason is FinishReason.ABORT
        ]
        return self._output(state, deltas)

    @staticmethod
    def _output(state: RequestState, deltas: list[CompletionDelta]) -> RequestOutput:
        first = state.seqs[0]
        t = first.timings
        firsts = [s.timings.first_token for s in state.seqs if s.timings.first_token]
        ends = [s.timings.finished for s in state.seqs if s.timings.finished]
        timings = RequestTimings(
            queued=(t.first_scheduled - state.arrival) if t.first_scheduled else None,
            first_token=(min(firsts) - state.arrival) if firsts else None,
            finished=(max(ends) - state.arrival) if state.finished and ends else None,
            token_times=[x - state.arrival for x in t.token_times],
        )
        return RequestOutput(
            request_id=state.request_id,
            deltas=deltas,
            finished=state.finished,
            num_prompt_tokens=first.num_prompt_tokens,
            num_cached_tokens=first.num_cached_tokens,
            num_output_tokens=sum(s.num_output_tokens for s in state.seqs),
            timings=timings,
        )
