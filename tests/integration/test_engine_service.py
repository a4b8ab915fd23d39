"""The engine pod on loopback, driven by a real gRPC client: tokens, cancellation,
back-pressure, errors, health, drain and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from engine.api import (
    ChatPrompt,
    EngineUnavailableError,
    FinishReason,
    InvalidRequestError,
    QueueFullError,
    SamplingParams,
)
from engine.api.grpc_client import GrpcEngineClient
from engine.config import EngineConfig, EnginePodConfig
from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle, load_model
from engine.service.server import SERVICE_NAME, EnginePod
from tessera.engine.v1 import engine_pb2 as pb
from tessera.grpc_errors import RETRY_AFTER_KEY

PROMPTS = [
    "The quick brown fox",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "1, 2, 3, 4,",
    "Tessera serves models",
    "SELECT * FROM",
]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
LONG = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
SETTINGS: dict[str, Any] = {
    "model": {"max_model_len": 512},
    "cache": {"kv_cache_memory": "64MiB", "block_size": 4},
    "scheduler": {"max_num_batched_tokens": 64},
}


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


def pod_config(**scheduler: int) -> EnginePodConfig:
    return EnginePodConfig(
        **{**SETTINGS, "scheduler": {**SETTINGS["scheduler"], **scheduler}},
        server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "retry_after": 0.25},
    )


async def started_pod(bundle: ModelBundle, config: EnginePodConfig, load: bool = True) -> EnginePod:
    pod = EnginePod(config, bundle=bundle)
    await pod.start()
    if load:
        await pod.load()
    return pod


@pytest.fixture
async def pod(tiny: ModelBundle) -> AsyncIterator[EnginePod]:
    p = await started_pod(tiny, pod_config())
    yield p
    await p.stop()


@pytest.fixture
async def client(pod: EnginePod) -> AsyncIterator[GrpcEngineClient]:
    c = GrpcEngineClient(f"127.0.0.1:{pod.ports.grpc}")
    yield c
    await c.close()


async def collect(client: GrpcEngineClient, prompt: Any, params: SamplingParams) -> list[Any]:
    stream = await client.generate(prompt, params)
    return [out async for out in stream]


async def wait_all_blocks_free(pod: EnginePod, timeout: float = 5.0) -> None:
    assert pod.engine is not None
    t_end = time.monotonic() + timeout
    while True:
        s = pod.engine.stats()
        if s.num_free_blocks == s.num_blocks and s.num_running == s.num_waiting == 0:
            return
        assert time.monotonic() < t_end, f"blocks not freed: {s}"
        await asyncio.sleep(0.02)


async def test_concurrent_streams_match_the_in_process_engine(
    tiny: ModelBundle, client: GrpcEngineClient
) -> None:
    local = LLMEngine(EngineConfig(**SETTINGS), bundle=tiny)
    expected = local.generate(PROMPTS, GREEDY)
    streams = await asyncio.gather(*(collect(client, p, GREEDY) for p in PROMPTS))
    for outs, want in zip(streams, expected, strict=True):
        got_ids = [t for o in outs for d in o.deltas for t in d.token_ids]
        assert got_ids == want.completions[0].token_ids
        assert "".join(d.text for o in outs for d in o.deltas) == want.completions[0].text
        last = outs[-1]
        assert last.finished and last.deltas[-1].finish_reason is FinishReason.LENGTH
        assert last.num_prompt_tokens == len(want.prompt_token_ids)
        assert last.num_output_tokens == 24


async def test_chat_prompt_uses_the_model_template(
    tiny: ModelBundle, client: GrpcEngineClient
) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    stream = await client.generate(ChatPrompt(messages), GREEDY)
    await stream.aclose()
    rendered = tiny.tokenizer.apply_chat_template(messages)
    assert stream.prompt_token_ids == tiny.tokenizer.encode(rendered)


async def test_cancelled_disconnected_and_expired_streams_free_every_block(
    pod: EnginePod, client: GrpcEngineClient
) -> None:
    async def cancel_after(n: int, prompt: str) -> None:
        stream = await client.generate(prompt, LONG)
        async for _ in stream:
            n -= 1
            if n == 0:
                await stream.aclose()
                return

    await asyncio.gather(*(cancel_after(3, p) for p in PROMPTS * 2))

    # a client that vanishes: its channel closes with streams open
    gone = GrpcEngineClient(f"127.0.0.1:{pod.ports.grpc}")
    open_streams = [await gone.generate(p, LONG) for p in PROMPTS[:3]]
    await anext(aiter(open_streams[0]))
    await gone.close()

    # a deadline far shorter than the generation: the engine aborts it, or gRPC ends the call
    stream = await client.generate(PROMPTS[0], LONG, timeout=0.1)
    got = 0
    with pytest.raises(EngineUnavailableError, match="DEADLINE_EXCEEDED"):
        async for out in stream:
            got = out.num_output_tokens
            if out.finished:
                assert out.deltas[0].finish_reason is FinishReason.ABORT
                raise EngineUnavailableError("DEADLINE_EXCEEDED (engine-side abort)")
    assert got < LONG.max_tokens
    await wait_all_blocks_free(pod)


async def test_full_queue_is_refused_at_once_with_a_retry_hint(tiny: ModelBundle) -> None:
    pod = await started_pod(tiny, pod_config(max_num_seqs=1, max_waiting=2))
    client = GrpcEngineClient(f"127.0.0.1:{pod.ports.grpc}")
    try:
        held = [await client.generate(p, LONG) for p in PROMPTS[:3]]  # 1 running, 2 waiting
        info = await client.info()
        load = info.load
        assert (load.num_running, load.num_waiting, load.waiting_capacity_left) == (1, 2, 0)
        t0 = time.perf_counter()
        with pytest.raises(QueueFullError) as refused:
            await client.generate(PROMPTS[3], GREEDY)
        assert time.perf_counter() - t0 < 1.0
        assert refused.value.retry_after == pytest.approx(0.25)
        call = client.stub.Generate(pb.GenerateRequest(text="x", sampling=pb.SamplingParams()))
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await call.read()
        assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(raw.value.trailing_metadata())[RETRY_AFTER_KEY] == "250"
        for s in held:
            await s.aclose()
        await wait_all_blocks_free(pod)
    finally:
        await client.close()
        await pod.stop()


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        ({"text": "hi", "sampling": pb.SamplingParams(temperature=-1)}, "temperature"),
        ({"text": "hi", "sampling": pb.SamplingParams(n=0)}, "n must be"),
        ({}, "no prompt"),
        ({"text": ""}, "empty"),
        ({"token_ids": pb.TokenIds(ids=[10**6])}, "outside the vocabulary"),
        ({"text": "word " * 600}, "context length"),
        ({"chat": pb.ChatPrompt()}, "no messages"),
    ],
)
async def test_bad_requests_get_invalid_argument(
    client: GrpcEngineClient, request_kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in client.stub.Generate(pb.GenerateRequest(**request_kwargs)):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    assert "Traceback" not in (err.value.details() or "")


async def test_duplicate_request_id_is_invalid(client: GrpcEngineClient) -> None:
    first = await client.generate(PROMPTS[0], LONG, request_id="same")
    with pytest.raises(InvalidRequestError, match="already in flight"):
        await client.generate(PROMPTS[1], GREEDY, request_id="same")
    assert await client.abort("same")
    assert not await client.abort("same")
    outs = [o async for o in first]
    assert outs[-1].deltas[0].finish_reason is FinishReason.ABORT


async def test_internal_errors_hide_their_details(
    pod: EnginePod, client: GrpcEngineClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pod.engine is not None

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret path /etc/shadow")

    monkeypatch.setattr(pod.engine, "add_request", broken)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in client.stub.Generate(pb.GenerateRequest(text="hi")):
            pass
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (err.value.details() or "")
    assert "incident" in (err.value.details() or "")


async def http_status(url: str) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(url)).status_code


async def health_status(port: int) -> list[int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [
            (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status
            for name in ("", SERVICE_NAME)
        ]


async def test_health_moves_not_serving_serving_not_serving(
    tiny: ModelBundle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.service.server")
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, 2
    pod = await started_pod(tiny, pod_config(), load=False)
    client = GrpcEngineClient(f"127.0.0.1:{pod.ports.grpc}")
    ready_url = f"http://127.0.0.1:{pod.ports.http}/ready"
    try:
        assert await health_status(pod.ports.grpc) == [not_serving] * 2
        assert await http_status(ready_url) == 503
        with pytest.raises(EngineUnavailableError, match="loading"):
            await client.generate("hi", GREEDY)
        await pod.load()
        ready = [r for r in caplog.records if r.getMessage().startswith("engine ready in")]
        assert [r.levelname for r in ready] == ["INFO"]  # start-up news, nothing to act on
        assert "speculative decoding: off" in [r.getMessage() for r in caplog.records]
        assert await health_status(pod.ports.grpc) == [serving] * 2
        assert await http_status(ready_url) == 200
        in_flight = await client.generate(PROMPTS[0], GREEDY)
        drain = asyncio.create_task(pod.drain(timeout=30))
        await asyncio.sleep(0.05)
        assert await health_status(pod.ports.grpc) == [not_serving] * 2
        assert await http_status(ready_url) == 503
        with pytest.raises(EngineUnavailableError, match="draining"):
            await client.generate("hi", GREEDY)
        outs = [o async for o in in_flight]  # the in-flight request still completes
        assert outs[-1].deltas[0].finish_reason is FinishReason.LENGTH
        assert await drain == 0
    finally:
        await client.close()
        await pod.stop()


async def test_drain_timeout_aborts_stragglers(
    pod: EnginePod, client: GrpcEngineClient, caplog: pytest.LogCaptureFixture
) -> None:
    streams = [await client.generate(p, LONG) for p in PROMPTS[:3]]
    assert await pod.drain(timeout=0.2) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "drain timeout: aborting 3 request(s)" in warnings
    for s in streams:
        outs = [o async for o in s]
        assert outs[-1].finished
        assert outs[-1].deltas[0].finish_reason is FinishReason.ABORT
    await wait_all_blocks_free(pod)


async def scrape(port: int) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            if "le" not in s.labels:
                values[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return values


async def test_metrics_move_as_requests_flow(pod: EnginePod, client: GrpcEngineClient) -> None:
    before = await scrape(pod.ports.http)
    assert before["tessera_engine_ready"] == 1
    assert before["tessera_engine_kv_cache_usage_ratio"] == 0
    held = await client.generate(PROMPTS[0], LONG)
    await anext(aiter(held))
    during = await scrape(pod.ports.http)
    assert during["tessera_engine_requests_running"] == 1
    assert during["tessera_engine_kv_cache_usage_ratio"] > 0
    await held.aclose()
    await asyncio.gather(*(collect(client, p, GREEDY) for p in PROMPTS))
    await collect(client, PROMPTS[2], GREEDY)  # a repeat hits the prefix cache
    await wait_all_blocks_free(pod)
    after = await scrape(pod.ports.http)

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert moved("tessera_engine_generation_tokens_total") >= 24 * (len(PROMPTS) + 1)
    assert moved("tessera_engine_prompt_tokens_total") > 0
    assert moved("tessera_engine_requests_finished_total{reason=length}") == len(PROMPTS) + 1
    assert moved("tessera_engine_requests_finished_total{reason=abort}") == 1
    assert moved("tessera_engine_time_to_first_token_seconds_count") == len(PROMPTS) + 2
    assert moved("tessera_engine_inter_token_latency_seconds_count") >= 23 * (len(PROMPTS) + 1)
    assert moved("tessera_engine_e2e_request_latency_seconds_count") == len(PROMPTS) + 2
    assert moved("tessera_engine_request_queue_time_seconds_count") == len(PROMPTS) + 2
    assert moved("tessera_engine_tokens_per_step_count") > 0
    assert moved("tessera_engine_prefix_cache_hits_total") > 0
    assert after["tessera_engine_requests_running"] == 0


async def test_tokenize_and_detokenize_over_grpc_match_the_engine(
    tiny: ModelBundle, client: GrpcEngineClient
) -> None:
    from engine.api import ChatPrompt, InvalidRequestError

    tok = tiny.tokenizer
    ids = await client.tokenize("Hello there")
    assert ids == tok.encode("Hello there")
    assert await client.tokenize("Hello there", add_special_tokens=False) == tok.encode(
        "Hello there", add_special_tokens=False
    )
    chat = ChatPrompt([{"role": "user", "content": "Hi"}])
    rendered = tok.apply_chat_template(chat.messages, True)
    assert await client.tokenize(chat) == tok.encode(rendered, add_special_tokens=False)
    assert await client.detokenize(ids) == tok.decode(ids, skip_special_tokens=False)
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        await client.detokenize([10**6])
