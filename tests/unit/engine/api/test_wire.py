"""Wire conversion: nothing lost or invented between the engine's types and the proto."""

from __future__ import annotations

import pytest

from engine.api import (
    CompletionDelta,
    FinishReason,
    RequestOutput,
    RequestTimings,
    SamplingParams,
    SamplingParamsError,
    TokenLogprob,
    wire,
)
from tessera.engine.v1 import engine_pb2 as pb


def test_unset_sampling_fields_keep_engine_defaults() -> None:
    assert wire.sampling_from_pb(pb.SamplingParams()) == SamplingParams()


def test_sampling_params_round_trip_every_field() -> None:
    params = SamplingParams(
        n=3,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.1,
        seed=1234,
        max_tokens=77,
        min_tokens=5,
        stop=["\n\n", "END"],
        stop_token_ids=[2, 3],
        ignore_eos=True,
        logprobs=4,
        skip_special_tokens=False,
    )
    back = wire.sampling_from_pb(wire.sampling_to_pb(params))
    assert back.temperature == pytest.approx(0.7)
    back.temperature = params.temperature
    for name in ("top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        assert getattr(back, name) == pytest.approx(getattr(params, name))
        setattr(back, name, getattr(params, name))
    assert back == params


def test_temperature_zero_is_kept_as_greedy_not_default() -> None:
    msg = pb.SamplingParams(temperature=0.0)
    assert wire.sampling_from_pb(msg).greedy


def test_out_of_range_wire_values_are_rejected() -> None:
    with pytest.raises(SamplingParamsError, match="top_p"):
        wire.sampling_from_pb(pb.SamplingParams(top_p=1.5))


def test_request_output_round_trip_keeps_tokens_logprobs_and_reasons() -> None:
    out = RequestOutput(
        request_id="r1",
        deltas=[
            CompletionDelta(0, [5, 6], "ab", [TokenLogprob(-0.1, [(5, -0.1), (9, -2.0)])] * 2),
            CompletionDelta(1, [7], "", [], FinishReason.STOP, "###"),
            CompletionDelta(2, [2], "", [], FinishReason.STOP, 2),
        ],
        finished=True,
        num_prompt_tokens=11,
        num_cached_tokens=8,
        num_output_tokens=4,
        timings=RequestTimings(queued=0.01, first_token=0.2, finished=None),
    )
    msg = wire.output_to_pb(out, piece=lambda t: f"<{t}>")
    assert msg.deltas[0].logprobs[0].top[1].token == "<9>"
    back = wire.output_from_pb(msg)
    assert back.deltas[1].stop_reason == "###" and back.deltas[2].stop_reason == 2
    assert back.deltas[0].logprobs[0].top[1][0] == 9
    assert back.deltas[0].logprobs[0].logprob == pytest.approx(-0.1)
    assert back.timings.finished is None and back.timings.first_token == pytest.approx(0.2)
    back.deltas[0].logprobs = out.deltas[0].logprobs
    back.timings = out.timings
    assert back == out
