"""Keys, per-key limits and the response cache through the real gateway and the real Redis."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from engine.model_source import ModelBundle, load_model
from gateway.server import GatewayServer
from tests.integration.gateway_fixtures import REDIS_URL, new_key, running_gateway

MODEL = "dummy:tiny"
HELLO = [{"role": "user", "content": "Hello there"}]
KEY_A, KEY_B = new_key(), new_key()


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


@pytest.fixture
async def gateway(tiny: ModelBundle) -> AsyncIterator[GatewayServer]:
    prefix = f"tessera-test-{secrets.token_hex(4)}:"
    async with running_gateway(
        tiny,
        auth={"api_keys": [KEY_A, KEY_B]},
        limits={"rpm": 5},
        redis={"url": REDIS_URL, "key_prefix": prefix},
    ) as server:
        yield server


def client(server: GatewayServer, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0
    )


async def test_missing_or_wrong_key_gets_401_and_is_never_logged(
    gateway: GatewayServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = new_key()
    with pytest.raises(openai.AuthenticationError) as err:
        await client(gateway, wrong).models.list()
    assert err.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{gateway.port}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert [m.id for m in (await client(gateway, KEY_A).models.list()).data] == [MODEL]
    for key in (wrong, KEY_A, KEY_B):
        assert key not in caplog.text


async def test_rpm_limit_is_per_key_with_retry_after(gateway: GatewayServer) -> None:
    a, b = client(gateway, KEY_A), client(gateway, KEY_B)
    for _ in range(5):
        await a.completions.create(model=MODEL, prompt="hi", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as err:
        await a.completions.create(model=MODEL, prompt="hi", max_tokens=1)
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    await b.completions.create(model=MODEL, prompt="hi", max_tokens=1)  # B's budget is its own


async def test_response_cache_hits_replay_streams_and_stay_per_key(gateway: GatewayServer) -> None:
    body = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 10,
        "temperature": 0,
        "ignore_eos": True,
    }
    url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
    async with httpx.AsyncClient() as http:
        auth_a = {"Authorization": f"Bearer {KEY_A}"}
        first = await http.post(url, json=body, headers=auth_a)
        second = await http.post(url, json=body, headers=auth_a)
        assert first.headers["x-tessera-cache"] == "miss"
        assert second.headers["x-tessera-cache"] == "hit"
        assert second.json()["choices"] == first.json()["choices"]
        assert second.json()["usage"] == first.json()["usage"]
        other = await http.post(url, json=body, headers={"Authorization": f"Bearer {KEY_B}"})
        assert other.headers["x-tessera-cache"] == "miss"  # never another key's entry
        bypass = await http.post(url, json=body, headers={**auth_a, "Cache-Control": "no-cache"})
        assert bypass.headers["x-tessera-cache"] == "bypass"
        sampled = await http.post(url, json={**body, "temperature": 0.8}, headers=auth_a)
        assert "x-tessera-cache" not in sampled.headers

    stream = await client(gateway, KEY_A).chat.completions.create(
        stream=True,
        stream_options={"include_usage": True},
        model=MODEL,
        messages=HELLO,
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    text, usage = "", None
    async for chunk in stream:
        text += "".join(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    assert text == first.json()["choices"][0]["message"]["content"]
    assert (
        usage is not None and usage.completion_tokens == first.json()["usage"]["completion_tokens"]
    )


async def test_redis_down_fails_open_and_logs_once(
    tiny: ModelBundle, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(
        tiny, limits={"rpm": 100}, redis={"url": "redis://127.0.0.1:1/0"}
    ) as server:
        c = client(server, "x")
        for _ in range(4):
            r = await c.chat.completions.create(
                model=MODEL, messages=HELLO, max_tokens=2, temperature=0
            )
            assert r.choices[0].message.content is not None
        assert server.gateway.redis_health.failures >= 4
        assert caplog.text.count("redis unavailable") == 1


async def test_grpc_calls_share_the_rest_accounting(gateway: GatewayServer) -> None:
    """Cache bypass, 401s, counters and latency come from the one accounting path: the
    gRPC front honours `cache-control: no-cache` metadata as REST honours the header."""
    import grpc

    from tessera.v1 import chat_pb2, common_pb2, service_pb2_grpc

    request = chat_pb2.ChatCompletionRequest(
        model=MODEL,
        messages=[chat_pb2.ChatMessage(role="user", content="Hello over gRPC")],
        sampling=common_pb2.SamplingOptions(max_tokens=4, temperature=0, ignore_eos=True),
    )
    auth = (("authorization", f"Bearer {KEY_A}"),)

    async def cache_status(call: grpc.aio.UnaryUnaryCall) -> str | None:
        await call
        return dict(await call.initial_metadata()).get("x-tessera-cache")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = service_pb2_grpc.TesseraStub(channel)
        assert await cache_status(stub.CreateChatCompletion(request, metadata=auth)) == "miss"
        assert await cache_status(stub.CreateChatCompletion(request, metadata=auth)) == "hit"
        bypass = (*auth, ("cache-control", "no-cache"))
        assert await cache_status(stub.CreateChatCompletion(request, metadata=bypass)) == "bypass"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateChatCompletion(request, metadata=(("authorization", "Bearer nope"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    registry = gateway.gateway.registry
    count = registry.get_sample_value
    assert count("tessera_gateway_requests_total", {"route": "grpc_chat", "status": "200"}) == 3
    assert count("tessera_gateway_requests_total", {"route": "grpc_chat", "status": "401"}) == 1
    latency = count("tessera_gateway_request_duration_seconds_count", {"route": "grpc_chat"})
    assert latency == 3
