"""Tool calling through a real gateway with the openai SDK and gRPC, on a random-weight
model: `required` and a named function always give calls whose arguments validate; `auto`
lets the model choose, and the stream carries OpenAI's tool-call deltas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
import pytest

from engine.model_source import ModelBundle, load_model
from gateway.server import GatewayServer
from tests.integration.gateway_fixtures import running_gateway

MODEL = "dummy:tiny"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


@pytest.fixture
async def gateway(tiny: ModelBundle) -> AsyncIterator[GatewayServer]:
    async with running_gateway(tiny) as server:
        yield server


def client(server: GatewayServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key="none", max_retries=0
    )


def _valid(name: str, arguments: str) -> bool:
    args = json.loads(arguments)
    if name == "get_weather":
        return (
            set(args) == {"city", "unit"}
            and len(args["city"]) <= 12
            and args["unit"] in ("celsius", "fahrenheit")
        )
    return name == "get_time" and args in ({"zone": "UTC"}, {"zone": "CET"})


async def _create(server: GatewayServer, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 120)
    return await client(server).chat.completions.create(
        model=MODEL, messages=kw.pop("messages", ASK), **kw
    )


async def test_required_and_named_calls_always_validate(gateway: GatewayServer) -> None:
    for seed in range(3):
        done = await _create(  # parallel calls: room for a few
            gateway,
            tools=[WEATHER, TIME],
            tool_choice="required",
            seed=seed,
            temperature=1.0,
            max_tokens=400,
        )
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = choice.message.tool_calls
        assert calls and all(_valid(c.function.name, c.function.arguments) for c in calls)
        assert all(c.id.startswith("call_") and c.type == "function" for c in calls)
    named = await _create(
        gateway,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        seed=4,
    )
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_time" and _valid("get_time", call.function.arguments)


async def test_parallel_calls_off_gives_one_call(gateway: GatewayServer) -> None:
    for seed in range(3):
        done = await _create(
            gateway,
            tools=[WEATHER, TIME],
            tool_choice="required",
            parallel_tool_calls=False,
            seed=seed,
            temperature=1.0,
        )
        assert len(done.choices[0].message.tool_calls) == 1


async def test_auto_answers_with_text_or_valid_calls(gateway: GatewayServer) -> None:
    for seed in range(4):
        done = await _create(gateway, tools=[WEATHER], seed=seed, temperature=1.0)
        choice = done.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            assert all(
                _valid(c.function.name, c.function.arguments) for c in choice.message.tool_calls
            )
        else:
            assert isinstance(choice.message.content, str)


async def test_streamed_calls_arrive_as_openai_deltas(gateway: GatewayServer) -> None:
    stream = await _create(
        gateway, tools=[WEATHER, TIME], tool_choice="required", stream=True, seed=1
    )
    calls: dict[int, dict[str, str]] = {}
    reasons = []
    async for chunk in stream:
        for ch in chunk.choices:
            reasons.append(ch.finish_reason)
            for d in ch.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                if d.id:
                    assert not entry["id"], "id comes once"
                    entry["id"], entry["name"] = d.id, d.function.name
                entry["arguments"] += d.function.arguments or ""
    assert calls and reasons[-1] == "tool_calls"
    assert all(_valid(c["name"], c["arguments"]) for c in calls.values())


async def test_multi_turn_with_the_tool_result(gateway: GatewayServer) -> None:
    first = await _create(gateway, tools=[WEATHER], tool_choice="required", seed=2)
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    final = await _create(gateway, messages=history, tools=[WEATHER], tool_choice="none", seed=3)
    assert final.choices[0].message.tool_calls is None
    assert isinstance(final.choices[0].message.content, str)


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [WEATHER],
                "messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}],
            },
            "messages",
        ),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
    ],
)
async def test_bad_tool_requests_get_a_400(
    gateway: GatewayServer, kw: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await _create(gateway, **kw)
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == param, body


async def test_langchain_bind_tools_and_structured_output(gateway: GatewayServer) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=12)
        country: str = Field(max_length=12)

    llm = langchain_openai.ChatOpenAI(
        model=MODEL,
        base_url=f"http://127.0.0.1:{gateway.port}/v1",
        api_key="none",
        max_tokens=120,
        temperature=0,
    )
    bound = llm.bind_tools([WEATHER], tool_choice="required")
    message = await bound.ainvoke("Weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    city = await llm.with_structured_output(City, method="json_schema").ainvoke("A city?")
    assert isinstance(city, City)


async def test_grpc_tool_call_parity(gateway: GatewayServer) -> None:
    from google.protobuf import json_format

    from tessera.v1 import chat_pb2, service_pb2_grpc

    body = {
        "model": MODEL,
        "messages": ASK,
        "sampling": {"max_tokens": 120, "temperature": 0},
        "tools": [WEATHER],
        "tool_choice": "required",
    }
    request = json_format.ParseDict(body, chat_pb2.ChatCompletionRequest())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        reply = await service_pb2_grpc.TesseraStub(channel).CreateChatCompletion(request)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    rest = await _create(gateway, tools=[WEATHER], tool_choice="required", temperature=0)
    assert [c.function.arguments for c in choice.message.tool_calls] == [
        c.function.arguments for c in rest.choices[0].message.tool_calls
    ]
