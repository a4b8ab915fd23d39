"""Optional OpenTelemetry tracing (the `otel` extra): off unless an OTLP endpoint is
configured; when on, one request's spans share a trace from the gateway's REST route
through its gRPC call to the engine's Generate."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tessera import tracing

ROOT = Path(__file__).resolve().parents[2]


def test_tracing_stays_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracing.ENDPOINT_VARIABLE, raising=False)
    assert tracing.configure_tracing("gateway") is False


# Run apart from the test process: the instrumentors patch FastAPI and grpc.aio globally.
SCRIPT = textwrap.dedent(
    """
    import asyncio, json
    import httpx
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from tessera.tracing import configure_tracing

    exporter = InMemorySpanExporter()
    assert configure_tracing("test", exporter)

    async def main():
        from engine.config import EnginePodConfig
        from engine.service.server import EnginePod
        from gateway.config import GatewayConfig
        from gateway.core import Gateway
        from gateway.server import GatewayServer

        pod = EnginePod(EnginePodConfig(
            model={"path": "dummy:tiny", "max_model_len": 512},
            cache={"kv_cache_memory": "64MiB"}, backend={"native_kernels": False},
            server={"host": "127.0.0.1", "port": 0, "metrics_port": 0}))
        ports = await pod.start()
        await pod.load()
        server = GatewayServer(Gateway(GatewayConfig(
            http={"host": "127.0.0.1", "port": 0, "grpc_port": 0},
            routing={"engines": [f"127.0.0.1:{ports.grpc}"], "health_interval": 0.2},
            redis={"url": None})))
        await server.start()
        while not server.gateway.pool.healthy():
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{server.port}/v1/completions",
                                  json={"model": "dummy:tiny", "prompt": "hi", "max_tokens": 2},
                                  timeout=60)
            assert r.status_code == 200, r.text
        await server.stop()
        await pod.stop()

    asyncio.run(main())
    print(json.dumps([
        {"name": s.name, "kind": s.kind.name, "trace": s.context.trace_id,
         "service": s.resource.attributes["service.name"]}
        for s in exporter.get_finished_spans()
    ]))
    """
)


def test_one_request_is_one_trace_from_gateway_route_to_engine_generate() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    pytest.importorskip("opentelemetry.instrumentation.grpc")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr[-3000:]
    spans = json.loads(run.stdout.strip().splitlines()[-1])
    (route,) = [s for s in spans if s["kind"] == "SERVER" and s["name"] == "POST /v1/completions"]
    generate = [s for s in spans if s["name"].endswith("EngineService/Generate")]
    assert {s["kind"] for s in generate} == {"CLIENT", "SERVER"}
    assert all(s["trace"] == route["trace"] for s in generate), spans
    assert route["service"] == "tessera-test"
