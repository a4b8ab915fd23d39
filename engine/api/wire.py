"""Between the contract's types and the wire messages of tessera.engine.v1 (both directions)."""

from __future__ import annotations

from typing import Any

from engine.api.client import EngineInfo, EngineLoad
from engine.api.outputs import (
    CompletionDelta,
    FinishReason,
    RequestOutput,
    RequestTimings,
    TokenLogprob,
)
from engine.api.params import SamplingParams, StructuredOutputs
from tessera.engine.v1 import engine_pb2 as pb

_FINISH_TO_PB = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}
_FINISH_FROM_PB = {v: k for k, v in _FINISH_TO_PB.items()}

# proto SamplingParams fields whose presence is tracked (`optional`), same names as ours
_OPTIONAL_FIELDS = (
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "max_tokens",
    "min_tokens",
    "ignore_eos",
    "logprobs",
    "skip_special_tokens",
)


def sampling_from_pb(msg: pb.SamplingParams) -> SamplingParams:
    """Engine SamplingParams from the wire; unset fields keep the engine's defaults.

    Raises SamplingParamsError for out-of-range values.
    """
    kwargs: dict[str, Any] = {f: getattr(msg, f) for f in _OPTIONAL_FIELDS if msg.HasField(f)}
    kwargs["stop"] = list(msg.stop)
    kwargs["stop_token_ids"] = list(msg.stop_token_ids)
    kwargs["logit_bias"] = {int(t): float(b) for t, b in msg.logit_bias.items()}
    if msg.HasField("structured_outputs"):
        kwargs["structured_outputs"] = structured_from_pb(msg.structured_outputs)
    return SamplingParams(**kwargs)


def structured_from_pb(msg: pb.StructuredOutputs) -> StructuredOutputs:
    """The constraint from the wire (an empty message sets none: refused by validation)."""
    which = msg.WhichOneof("kind")
    if which == "choice":
        return StructuredOutputs(choice=tuple(msg.choice.values))
    if which is None:
        return StructuredOutputs()
    return StructuredOutputs(**{which: getattr(msg, which)})


def structured_to_pb(spec: StructuredOutputs) -> pb.StructuredOutputs:
    """The wire form of a constraint."""
    if spec.choice is not None:
        return pb.StructuredOutputs(choice=pb.Choices(values=list(spec.choice)))
    (kind,) = spec.kinds()
    return pb.StructuredOutputs(**{kind: getattr(spec, kind)})


def sampling_to_pb(params: SamplingParams) -> pb.SamplingParams:
    """The wire form of every field of params (for clients)."""
    msg = pb.SamplingParams(
        stop=params.stop, stop_token_ids=params.stop_token_ids, logit_bias=params.logit_bias
    )
    for f in _OPTIONAL_FIELDS:
        value = getattr(params, f)
        if value is not None:
            setattr(msg, f, value)
    if params.structured_outputs is not None:
        msg.structured_outputs.CopyFrom(structured_to_pb(params.structured_outputs))
    return msg


def _logprob_to_pb(token_id: int, lp: TokenLogprob, piece: Any) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token_id=token_id,
        token=piece(token_id),
        logprob=lp.logprob,
        top=[pb.TopLogprob(token_id=t, token=piece(t), logprob=v) for t, v in lp.top],
    )


def output_to_pb(out: RequestOutput, piece: Any, prompt_ids: list[int] | None = None) -> Any:
    """One GenerateResponse from one step's RequestOutput; piece(id) renders a token's text."""
    deltas = []
    for d in out.deltas:
        msg = pb.CompletionDelta(
            index=d.index,
            token_ids=d.token_ids,
            text=d.text,
            # logprobs is empty unless requested, else one per token
            logprobs=[
                _logprob_to_pb(t, lp, piece) for t, lp in zip(d.token_ids, d.logprobs, strict=False)
            ],
            finish_reason=_FINISH_TO_PB[d.finish_reason]
            if d.finish_reason
            else pb.FINISH_REASON_UNSPECIFIED,
        )
        if isinstance(d.stop_reason, str):
            msg.stop_string = d.stop_reason
        elif isinstance(d.stop_reason, int):
            msg.stop_token_id = d.stop_reason
        deltas.append(msg)
    t = out.timings
    timings = pb.Timings()
    for name in ("queued", "first_token", "finished"):
        value = getattr(t, name)
        if value is not None:
            setattr(timings, name, value)
    return pb.GenerateResponse(
        request_id=out.request_id,
        deltas=deltas,
        finished=out.finished,
        usage=pb.Usage(
            prompt_tokens=out.num_prompt_tokens,
            completion_tokens=out.num_output_tokens,
            cached_tokens=out.num_cached_tokens,
        ),
        timings=timings,
        prompt_token_ids=prompt_ids or [],
    )


def output_from_pb(msg: Any) -> RequestOutput:
    """The engine's RequestOutput from a GenerateResponse (clients of remote engines)."""
    deltas = []
    for d in msg.deltas:
        which = d.WhichOneof("stop_reason")
        stop: str | int | None = getattr(d, which) if which else None
        deltas.append(
            CompletionDelta(
                index=d.index,
                token_ids=list(d.token_ids),
                text=d.text,
                logprobs=[
                    TokenLogprob(lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                    for lp in d.logprobs
                ],
                finish_reason=_FINISH_FROM_PB.get(d.finish_reason),
                stop_reason=stop,
            )
        )
    t = msg.timings
    timings = RequestTimings(
        queued=t.queued if t.HasField("queued") else None,
        first_token=t.first_token if t.HasField("first_token") else None,
        finished=t.finished if t.HasField("finished") else None,
    )
    return RequestOutput(
        request_id=msg.request_id,
        deltas=deltas,
        finished=msg.finished,
        num_prompt_tokens=msg.usage.prompt_tokens,
        num_cached_tokens=msg.usage.cached_tokens,
        num_output_tokens=msg.usage.completion_tokens,
        timings=timings,
    )


_INFO_FIELDS = (
    "model",
    "model_source",
    "backend",
    "quantization",
    "device",
    "dtype",
    "max_model_len",
    "num_kv_blocks",
    "block_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_waiting",
    "accepting",
    "version",
    "created",
)
_LOAD_FIELDS = (
    "num_running",
    "num_waiting",
    "kv_usage",
    "num_free_blocks",
    "waiting_capacity_left",
)


def info_to_pb(info: EngineInfo) -> pb.InfoResponse:
    """The Info RPC's reply."""
    load = pb.EngineLoad(**{f: getattr(info.load, f) for f in _LOAD_FIELDS})
    return pb.InfoResponse(load=load, **{f: getattr(info, f) for f in _INFO_FIELDS})


def info_from_pb(msg: pb.InfoResponse) -> EngineInfo:
    """EngineInfo from the Info RPC's reply (clients of remote engines)."""
    load = EngineLoad(**{f: getattr(msg.load, f) for f in _LOAD_FIELDS})
    return EngineInfo(load=load, **{f: getattr(msg, f) for f in _INFO_FIELDS})
