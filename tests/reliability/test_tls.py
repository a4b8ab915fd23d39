"""Optional TLS, tested with a throwaway certificate: REST and gRPC at the gateway, and
between the gateway and the engine pod."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from engine.config import EnginePodConfig
from engine.model_source import load_model
from engine.service.server import EnginePod
from gateway.config import GatewayConfig
from gateway.core import Gateway
from gateway.server import GatewayServer
from tessera.v1 import models_pb2, service_pb2_grpc


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the throwaway certificate"
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
async def tls_stack(cert: tuple[Path, Path]) -> AsyncIterator[GatewayServer]:
    crt, key = cert
    pod = EnginePod(
        EnginePodConfig(
            model={"max_model_len": 512},
            cache={"kv_cache_memory": "64MiB"},
            server={
                "host": "127.0.0.1",
                "port": 0,
                "metrics_port": 0,
                "tls_cert": crt,
                "tls_key": key,
            },
        ),
        bundle=load_model("dummy:tiny", seed=3),
    )
    await pod.start()
    await pod.load()
    config = GatewayConfig(
        http={"host": "127.0.0.1", "port": 0, "grpc_port": 0, "tls_cert": crt, "tls_key": key},
        routing={
            "engines": [f"127.0.0.1:{pod.ports.grpc}"],
            "engine_tls_ca": crt,
            "health_interval": 0.3,
        },
        redis={"url": None},
    )
    server = GatewayServer(Gateway(config))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await pod.stop()


async def test_tls_end_to_end(tls_stack: GatewayServer, cert: tuple[Path, Path]) -> None:
    crt = cert[0]
    assert tls_stack.gateway.pool.healthy(), "the gateway could not reach the engine over TLS"
    http = httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(crt)))
    client = openai.AsyncOpenAI(
        base_url=f"https://127.0.0.1:{tls_stack.port}/v1",
        api_key="x",
        http_client=http,
        max_retries=0,
    )
    r = await client.chat.completions.create(
        model="dummy:tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content is not None
    await client.close()

    async with httpx.AsyncClient() as plain:
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port is refused
            await plain.get(f"http://127.0.0.1:{tls_stack.port}/health")

    creds = grpc.ssl_channel_credentials(root_certificates=crt.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{tls_stack.grpc_port}", creds) as channel:
        models = await service_pb2_grpc.TesseraStub(channel).ListModels(
            models_pb2.ListModelsRequest()
        )
        assert [m.id for m in models.data] == ["dummy:tiny"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_stack.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await service_pb2_grpc.TesseraStub(channel).ListModels(
                models_pb2.ListModelsRequest(), timeout=3
            )
