"""Bad input: schemathesis generates requests from the gateway's own OpenAPI document
(valid and invalid); no answer may be a 5xx or hang. `make fuzz` runs a long version."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc
import pytest

from engine.model_source import ModelBundle, load_model
from tests.integration.gateway_fixtures import running_gateway

EXAMPLES = int(os.environ.get("TESSERA_FUZZ_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


async def test_schemathesis_finds_no_server_errors(tiny: ModelBundle, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    async with running_gateway(tiny) as server:
        base = f"http://127.0.0.1:{server.port}"
        proc = await asyncio.create_subprocess_exec(
            str(st),
            "run",
            f"{base}/openapi.json",
            "--url",
            base,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
            "--max-examples",
            str(EXAMPLES),
            "--request-timeout",
            "60",
            "--generation-deterministic",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=900)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
    assert "Server error" not in report


async def test_malformed_grpc_messages_get_a_status_not_a_crash(tiny: ModelBundle) -> None:
    async with (
        running_gateway(tiny) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        raw = channel.unary_unary(
            "/tessera.v1.Tessera/CreateChatCompletion",
            request_serializer=None,
            response_deserializer=None,
        )
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x80\x80\x80\x80\x80", b"\x12\x05abc"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(garbage, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Traceback" not in (err.value.details() or "")
        # the server still answers properly afterwards
        models = channel.unary_unary(
            "/tessera.v1.Tessera/ListModels",
            request_serializer=None,
            response_deserializer=None,
        )
        assert await models(b"", timeout=10) is not None
