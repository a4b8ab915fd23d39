"""The gateway through the official `openai` SDK: shapes, streaming, n, stop, logprobs,
usage, seeds, errors, overload, disconnects, and gRPC giving the same answers as REST."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import httpx
import openai
import pytest

from engine.model_source import ModelBundle, load_model
from gateway.server import GatewayServer
from tessera.v1 import chat_pb2, common_pb2, completions_pb2, models_pb2, service_pb2_grpc
from tests.integration.gateway_fixtures import running_gateway

MODEL = "dummy:tiny"
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


@pytest.fixture
async def gateway(tiny: ModelBundle) -> AsyncIterator[GatewayServer]:
    async with running_gateway(tiny) as server:
        yield server


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="unused", max_retries=0
    )
    yield c
    await c.close()


async def test_models_lists_the_engine_model(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert (await client.models.retrieve(MODEL)).id == MODEL


async def test_chat_completion_shape_and_usage(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=0
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens > 5


async def test_stream_matches_non_stream_and_reports_usage(client: openai.AsyncOpenAI) -> None:
    kwargs = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 20,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    whole = await client.chat.completions.create(**kwargs)
    stream = await client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    )
    text, finish, usage, roles = "", None, None, []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for c in chunk.choices:
            roles += [c.delta.role] if c.delta.role else []
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert roles == ["assistant"]
    assert text == whole.choices[0].message.content
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 20
    assert usage.prompt_tokens == whole.usage.prompt_tokens  # type: ignore[union-attr]


async def test_continuous_usage_stats_counts_up_in_every_chunk(
    client: openai.AsyncOpenAI,
) -> None:
    """vLLM's stream_options extension, which guidellm sends."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
        extra_body={"ignore_eos": True},
    )
    counts = [chunk.usage.completion_tokens async for chunk in stream if chunk.usage]
    assert counts == sorted(counts) and counts[-1] == 8 and len(counts) > 2


async def test_n_and_seed_give_n_reproducible_choices(client: openai.AsyncOpenAI) -> None:
    kwargs = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 10,
        "temperature": 1.0,
        "n": 3,
        "seed": 1234,
    }
    a = await client.chat.completions.create(**kwargs)
    b = await client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1  # independent samples
    assert (
        a.usage is not None
        and a.usage.completion_tokens
        == sum((len(c.message.content or "") > 0 and 10) or 0 for c in a.choices)
    ) or a.usage.completion_tokens <= 30


async def test_stop_sequence_ends_before_it(client: openai.AsyncOpenAI) -> None:
    base = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 30,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    full = (await client.chat.completions.create(**base)).choices[0].message.content or ""
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    r = await client.chat.completions.create(stop=[stop], **base)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[: full.index(stop)]


async def test_logprobs_with_top_alternatives(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.logprob == pytest.approx(max(t.logprob for t in item.top_logprobs), abs=1e-4)
    assert "".join(i.token for i in content) == r.choices[0].message.content


async def test_completions_prompts_echo_and_logprobs(client: openai.AsyncOpenAI) -> None:
    r = await client.completions.create(
        model=MODEL, prompt=["Once upon", "The cat"], max_tokens=6, temperature=0, n=2
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both samples agree
    echo = await client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=6, temperature=0, echo=True
    )
    assert echo.choices[0].text == "Once upon" + r.choices[0].text
    lp = await client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=4, temperature=0, logprobs=2
    )
    logprobs = lp.choices[0].logprobs
    assert logprobs is not None and len(logprobs.tokens or []) == 4
    assert all(len(t) == 2 for t in logprobs.top_logprobs or [])
    ids = await client.completions.create(
        model=MODEL, prompt=[1, 2, 3, 4], max_tokens=3, temperature=0
    )
    assert ids.usage is not None and ids.usage.prompt_tokens == 4


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"temperature": 5}, 400, "temperature"),
        ({"n": 0}, 400, "n"),
        ({"max_tokens": 10**9}, 400, "max_tokens"),
        ({"model": "no-such-model"}, 404, "model"),
        (  # the deprecated form of tools is named, not silently ignored
            {"extra_body": {"functions": [{"name": "f", "parameters": {}}]}},
            400,
            "functions",
        ),
        ({"extra_body": {"bogus_field": 1}}, 400, "bogus_field"),
        ({"messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages"),
    ],
)
async def test_bad_requests_get_openai_errors(
    client: openai.AsyncOpenAI, kwargs: dict, status: int, param: str
) -> None:
    args = {"model": MODEL, "messages": HELLO, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(**args)
    assert err.value.status_code == status
    body = err.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
    assert body["param"] == param or param in body["message"]


async def test_oversized_body_gets_413_and_garbage_gets_400(gateway: GatewayServer) -> None:
    url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
    async with httpx.AsyncClient() as http:
        big = await http.post(
            url, content=b"x" * (5 * 1024 * 1024), headers={"content-type": "application/json"}
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        bad = await http.post(
            url, content=b"\xff\xfe{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and "error" in bad.json()
        unknown = await http.get(f"http://127.0.0.1:{gateway.port}/v1/nothing")
        assert unknown.status_code == 404 and unknown.json()["error"]["type"]


async def test_overload_answers_429_with_retry_after(tiny: ModelBundle) -> None:
    async with running_gateway(tiny, http={"max_inflight": 1}) as server:
        c = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0
        )
        long = await c.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=400,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        await anext(aiter(long))
        with pytest.raises(openai.RateLimitError) as err:
            await c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        assert err.value.response.headers["retry-after"] == "1"
        await long.close()
        await c.close()


async def test_client_disconnect_aborts_the_engine_request(gateway: GatewayServer) -> None:
    url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
    body = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 450,
        "stream": True,
        "ignore_eos": True,
    }
    engine = gateway.gateway.pool.endpoints["local"].client.engine  # type: ignore[attr-defined]
    async with httpx.AsyncClient() as http, http.stream("POST", url, json=body) as resp:
        lines = resp.aiter_lines()
        for _ in range(6):
            await anext(lines)
        assert engine.stats().num_running == 1
    for _ in range(100):
        s = engine.stats()
        if s.num_running == 0 and s.num_free_blocks == s.num_blocks:
            break
        await asyncio.sleep(0.05)
    assert s.num_running == 0 and s.num_free_blocks == s.num_blocks


async def test_grpc_and_rest_give_the_same_answers(
    gateway: GatewayServer, client: openai.AsyncOpenAI
) -> None:
    rest = await client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2
    )
    rest_cmpl = await client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=6, temperature=0
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = service_pb2_grpc.TesseraStub(channel)
        req = chat_pb2.ChatCompletionRequest(
            model=MODEL,
            messages=[chat_pb2.ChatMessage(role="user", content=HELLO[0]["content"])],
            sampling=common_pb2.SamplingOptions(max_tokens=12, temperature=0),
            logprobs=True,
            top_logprobs=2,
        )
        unary = await stub.CreateChatCompletion(req)
        text = ""
        async for chunk in stub.StreamChatCompletion(req):
            text += "".join(c.delta.content for c in chunk.choices)
        cmpl = await stub.CreateCompletion(
            completions_pb2.CompletionRequest(
                model=MODEL,
                text="Once upon",
                sampling=common_pb2.SamplingOptions(max_tokens=6, temperature=0),
            )
        )
        models = await stub.ListModels(models_pb2.ListModelsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateChatCompletion(
                chat_pb2.ChatCompletionRequest(model="nope", messages=req.messages)
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.CreateChatCompletion(
                chat_pb2.ChatCompletionRequest(
                    model=MODEL,
                    messages=req.messages,
                    sampling=common_pb2.SamplingOptions(temperature=9),
                )
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unary.choices[0].message.content == rest.choices[0].message.content == text
    assert unary.usage.total_tokens == rest.usage.total_tokens  # type: ignore[union-attr]
    assert [t.token for t in unary.choices[0].logprobs.content] == [
        t.token
        for t in rest.choices[0].logprobs.content  # type: ignore[union-attr]
    ]
    assert cmpl.choices[0].text == rest_cmpl.choices[0].text
    assert [m.id for m in models.data] == [MODEL]


async def test_metrics_count_requests_tokens_and_ttft_stages(
    gateway: GatewayServer, client: openai.AsyncOpenAI
) -> None:
    await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=0)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=HELLO, max_tokens=5)
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{gateway.port}/metrics")).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['tessera_gateway_requests_total{route="chat",status="200"}'] == 1
    assert samples['tessera_gateway_requests_total{route="chat",status="404"}'] == 1
    assert samples["tessera_gateway_generation_tokens_total"] == 5
    assert samples["tessera_gateway_engines_healthy"] == 1
    for stage in ("gateway_queue", "cache_lookup", "engine_queue", "prefill"):
        assert samples[f'tessera_gateway_ttft_stage_seconds_count{{stage="{stage}"}}'] == 1
    assert samples['tessera_gateway_time_to_first_token_seconds_count{route="chat"}'] == 1
    assert samples["tessera_engine_generation_tokens_total"] == 5  # the embedded engine's


async def test_openapi_document_lists_every_route_with_schemas(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient() as http:
        doc = (await http.get(f"http://127.0.0.1:{gateway.port}/openapi.json")).json()
    paths = doc["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready"):
        assert path in paths
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionRequest"
    )
    for code in ("200", "400", "401", "404", "429"):
        assert code in chat["responses"]
    props = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    for field in ("messages", "stream", "n", "stop", "logprobs", "top_k", "ignore_eos", "rag"):
        assert field in props
