"""The output processor on its own: it needs no scheduler, and a stop string comes back as
data for the engine to apply, never as a change to the scheduler's state."""

from __future__ import annotations

from collections.abc import Sequence as Seq

from engine.api import FinishReason
from engine.detokenizer import IncrementalDetokenizer
from engine.output_processor import OutputProcessor, RequestState
from engine.scheduler import SequenceUpdate
from engine.sequence import SequenceStatus
from tests.unit.engine.factories import make_scheduler, make_seq


class LetterTokenizer:
    """Token id i decodes to the letter chr(ord('a') + i % 26); no special tokens."""

    def decode(self, ids: Seq[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)

    def is_special(self, token_id: int) -> bool:
        return False


def _request(stop: list[str], n: int = 1) -> RequestState:
    seqs = [make_seq(4, request_id="r", index=i, max_tokens=16) for i in range(n)]
    detoks = [IncrementalDetokenizer(LetterTokenizer(), s.prompt_token_ids, stop) for s in seqs]
    return RequestState("r", seqs, detoks, seqs[0].timings.arrival)


def _feed(state: RequestState, token: int) -> list[SequenceUpdate]:
    updates = []
    for seq in state.seqs:
        seq.append_token(token, None, 0.0)
        updates.append(SequenceUpdate(seq, [token], finished=False))
    return updates


def test_stop_string_is_returned_as_a_stop_and_leaves_the_sequence_running() -> None:
    processor = OutputProcessor()
    state = _request(stop=["cd"], n=2)
    processor.add(state)
    for seq in state.seqs:
        seq.status = SequenceStatus.RUNNING
    first = processor.process(_feed(state, 0))  # "a"
    assert first.stops == []
    second = processor.process(_feed(state, 2))  # "ac": could start "cd"
    assert second.stops == []
    third = processor.process(_feed(state, 3))  # "acd": the stop string
    assert [(s.seq, s.reason, s.stop_reason) for s in third.stops] == [
        (seq, FinishReason.STOP, "cd") for seq in state.seqs
    ]
    # Nothing finished behind the engine's back: the engine applies the stops.
    assert all(seq.status is SequenceStatus.RUNNING for seq in state.seqs)
    deltas = third.deltas["r"]
    assert [(d.finish_reason, d.stop_reason) for d in deltas] == [(FinishReason.STOP, "cd")] * 2
    texts = [d.text for step in (first, second, third) for d in step.deltas["r"][:1]]
    assert "".join(texts) == "a", "no part of the stop string is emitted"


def test_request_output_is_final_once_the_engine_applies_the_stops() -> None:
    scheduler = make_scheduler()
    processor = OutputProcessor()
    state = _request(stop=["b"])
    processor.add(state)
    scheduler.add(state.seqs)
    scheduler.schedule()
    step = processor.process(_feed(state, 1))  # "b"
    for stop in step.stops:
        scheduler.finish(stop.seq, stop.reason, stop.stop_reason)
    (out,) = processor.request_outputs(step)
    assert out.finished and out.deltas[0].finish_reason is FinishReason.STOP
    assert state.seqs[0].stop_reason == "b"
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks
    assert "r" not in processor.requests
