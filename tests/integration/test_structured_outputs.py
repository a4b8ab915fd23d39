"""Structured outputs and logit_bias through a real gateway and real clients (the openai SDK,
gRPC), on a random-weight model: a constrained answer parses and validates whatever the
model would have said."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

import grpc
import openai
import pytest
from pydantic import BaseModel, Field

from engine.model_source import ModelBundle, load_model
from gateway.server import GatewayServer
from tests.integration.gateway_fixtures import running_gateway

MODEL = "dummy:tiny"


class Person(BaseModel):
    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=120)
    pets: list[Annotated[str, Field(max_length=8)]] = Field(max_length=2)


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


HELLO = [{"role": "user", "content": "Describe a person as JSON."}]


async def test_sdk_parse_with_a_pydantic_model(gateway: GatewayServer) -> None:
    c = client(gateway)
    for seed in range(3):
        done = await c.chat.completions.parse(
            model=MODEL,
            messages=HELLO,  # type: ignore[arg-type]
            response_format=Person,
            max_tokens=150,
            temperature=1.0,
            seed=seed,
        )
        choice = done.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, Person)


async def test_json_schema_streamed_and_not_validates(gateway: GatewayServer) -> None:
    schema = Person.model_json_schema()
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema, "strict": True},
    }
    c = client(gateway)
    whole = await c.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        response_format=fmt,
        max_tokens=150,
        seed=7,  # type: ignore[arg-type]
    )
    Person.model_validate_json(whole.choices[0].message.content or "")
    stream = await c.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        response_format=fmt,
        max_tokens=150,
        seed=8,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    Person.model_validate_json(text)


async def test_json_object_and_vllm_structured_outputs(gateway: GatewayServer) -> None:
    c = client(gateway)
    obj = await c.chat.completions.create(
        model=MODEL, messages=HELLO, response_format={"type": "json_object"}, max_tokens=300, seed=2
    )
    content = obj.choices[0].message.content or ""
    assert content.startswith("{")
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    picked = await c.completions.create(
        model=MODEL,
        prompt="The colour is",
        max_tokens=20,
        n=4,
        temperature=1.0,
        extra_body={"structured_outputs": {"choice": ["red", "green", "blue"]}},
    )
    assert {ch.text for ch in picked.choices} <= {"red", "green", "blue"}
    digits = await c.completions.create(
        model=MODEL,
        prompt="Call",
        max_tokens=20,
        extra_body={"structured_outputs": {"regex": "[0-9]{3}-[0-9]{4}"}},
    )
    assert len(digits.choices[0].text) == 8 and digits.choices[0].text[3] == "-"


async def test_logit_bias_forces_a_token(gateway: GatewayServer) -> None:
    c = client(gateway)
    forced = await c.completions.create(
        model=MODEL,
        prompt="Hello",
        max_tokens=5,
        temperature=0,
        logprobs=0,
        logit_bias={"42": 100},
        extra_body={"ignore_eos": True},
    )
    tokens = forced.choices[0].logprobs.tokens  # type: ignore[union-attr]
    assert len(tokens) == 5 and len(set(tokens)) == 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "strin"}},
                }
            },
            "structured_outputs",
        ),
        ({"structured_outputs": {"regex": "(open"}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        (
            {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
            "structured_outputs",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"five": 1}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ],
)
async def test_bad_constraints_get_a_400_naming_the_field(
    gateway: GatewayServer, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await client(gateway).chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=5,
            extra_body=extra,  # type: ignore[arg-type]
        )
    body = err.value.body
    assert isinstance(body, dict) and body["param"].startswith(param), body


async def test_grpc_response_format_matches_rest(gateway: GatewayServer) -> None:
    from tessera.v1 import chat_pb2, common_pb2, service_pb2_grpc

    request = chat_pb2.ChatCompletionRequest(
        model=MODEL,
        messages=[chat_pb2.ChatMessage(role="user", content="A person, as JSON")],
        sampling=common_pb2.SamplingOptions(max_tokens=150, temperature=0),
    )
    request.response_format.type = "json_schema"
    request.response_format.json_schema.name = "person"
    request.response_format.json_schema.schema.update(Person.model_json_schema())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        reply = await service_pb2_grpc.TesseraStub(channel).CreateChatCompletion(request)
    grpc_text = reply.choices[0].message.content
    Person.model_validate_json(grpc_text)
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": Person.model_json_schema()},
    }
    rest = await client(gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "A person, as JSON"}],
        response_format=fmt,  # type: ignore[arg-type]
        max_tokens=150,
        temperature=0,
    )
    assert rest.choices[0].message.content == grpc_text


async def test_tokenize_gives_ids_that_logit_bias_takes(gateway: GatewayServer) -> None:
    import httpx

    base = f"http://127.0.0.1:{gateway.port}"
    async with httpx.AsyncClient(base_url=base) as http:
        r = await http.post("/tokenize", json={"model": MODEL, "prompt": " blue"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 512
        ids = (
            await http.post(
                "/tokenize", json={"model": MODEL, "prompt": " blue", "add_special_tokens": False}
            )
        ).json()["tokens"]
        back = await http.post("/detokenize", json={"model": MODEL, "tokens": ids})
        assert back.json() == {"prompt": " blue"}
        chat = await http.post(
            "/tokenize", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
        )
        assert chat.json()["count"] > len(ids)
        bad = await http.post("/detokenize", json={"model": MODEL, "tokens": [10**7]})
        assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
        neither = await http.post("/tokenize", json={"model": MODEL})
        assert neither.status_code == 400
        unknown = await http.post("/tokenize", json={"model": "nope", "prompt": "x"})
        assert unknown.status_code == 404
    forced = await client(gateway).completions.create(
        model=MODEL,
        prompt="My favourite colour is",
        max_tokens=len(ids),
        temperature=0,
        logit_bias={str(t): 100 for t in ids[:1]},
        extra_body={"ignore_eos": True},
    )
    assert forced.choices[0].text.startswith(" blue"[: len(back.json()["prompt"])][:2])
