"""A model without a chat template (a base model such as Gemma 3 270M) serves completions and
refuses chats with a clear 400 / INVALID_ARGUMENT, unless --chat-template gives one."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle, ModelSourceError, load_model
from gateway.server import GatewayServer
from tessera.embedded import build_embedded
from tessera.v1 import chat_pb2, common_pb2, service_pb2_grpc
from tests.integration.gateway_fixtures import ENGINE_SETTINGS, serve_config

MODEL = "dummy:tiny"
HELLO = [{"role": "user", "content": "Hello!"}]
TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"


@pytest.fixture(scope="module")
def base_model() -> ModelBundle:
    """dummy:tiny with its tokenizer's chat template taken away."""
    bundle = load_model(MODEL, seed=3)
    tokenizer = copy.copy(bundle.tokenizer)
    tokenizer.chat_template = None
    return dataclasses.replace(bundle, tokenizer=tokenizer)


@asynccontextmanager
async def serving(bundle: ModelBundle, template: Path | None) -> AsyncIterator[GatewayServer]:
    model = {**ENGINE_SETTINGS["model"], "chat_template": template}
    engine = LLMEngine(EngineConfig(**{**ENGINE_SETTINGS, "model": model}), bundle=bundle)
    server = await build_embedded(serve_config(), engine)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_base_model_refuses_chat_but_serves_completions(base_model: ModelBundle) -> None:
    async with serving(base_model, None) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            chat = await http.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 4}
            )
            completion = await http.post(
                "/v1/completions", json={"model": MODEL, "prompt": "Once", "max_tokens": 4}
            )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = service_pb2_grpc.TesseraStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateChatCompletion(
                    chat_pb2.ChatCompletionRequest(
                        model=MODEL,
                        messages=[chat_pb2.ChatMessage(role="user", content="Hello!")],
                        sampling=common_pb2.SamplingOptions(max_tokens=4),
                    )
                )
    assert chat.status_code == 400
    error = chat.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "has no chat template" in error["message"]
    assert "--chat-template" in error["message"]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has no chat template" in (err.value.details() or "")
    assert completion.status_code == 200
    assert completion.json()["usage"]["completion_tokens"] == 4


async def test_chat_template_flag_renders_chats(base_model: ModelBundle, tmp_path: Path) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    async with (
        serving(base_model, template) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http,
    ):
        chat = await http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 4}
        )
        tokens = await http.post(
            "/tokenize", json={"model": MODEL, "messages": HELLO, "add_special_tokens": False}
        )
    assert chat.status_code == 200
    assert chat.json()["usage"]["completion_tokens"] == 4
    assert tokens.status_code == 200
    expected = base_model.tokenizer.encode("[user] Hello!\n[assistant]", add_special_tokens=False)
    assert tokens.json()["tokens"] == expected
    assert base_model.tokenizer.chat_template is None, "the bundle's tokenizer is left alone"


def test_bad_template_file_is_one_line_before_loading(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    config = EngineConfig(model={"path": "no/such/model", "chat_template": broken})
    with pytest.raises(ModelSourceError) as e:
        LLMEngine(config)
    assert "invalid Jinja chat template" in str(e.value) and "\n" not in str(e.value)
