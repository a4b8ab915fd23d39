"""Dashboards proven on live data: the stack serves traffic, a real Prometheus scrapes
it, and every panel's query (and template variable) returns data through its HTTP API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import openai
import pytest

from engine.model_source import ModelBundle, load_model
from tests.integration.gateway_fixtures import new_key, running_gateway
from tests.observability.catalogue import ROOT
from tests.observability.prometheus import Prometheus

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
KEY = new_key()


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


async def drive_traffic(port: int, rag_port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rag_port}") as rag:
        await rag.post("/v1/collections", json={"name": "docs"})
        docs = [{"id": "a", "text": "Tesserae are the small tiles of a mosaic."}]
        assert (
            await rag.post("/v1/collections/docs/documents", json={"documents": docs})
        ).is_success
    c = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    await c.chat.completions.create(
        model="dummy:tiny",
        max_tokens=4,
        extra_body={"rag": {"collection": "docs", "top_k": 1}},
        messages=[{"role": "user", "content": "What is a tessera?"}],
    )
    hello = [{"role": "user", "content": "Hello!"}]
    same = {"model": "dummy:tiny", "messages": hello, "max_tokens": 8, "temperature": 0}
    await asyncio.gather(
        c.chat.completions.create(**same),
        c.completions.create(model="dummy:tiny", prompt="Once upon a time", max_tokens=16),
    )
    await c.chat.completions.create(**same)  # a response-cache hit
    stream = await c.chat.completions.create(
        stream=True, model="dummy:tiny", messages=hello, max_tokens=16
    )
    async for _ in stream:
        pass
    with pytest.raises(openai.NotFoundError):
        await c.chat.completions.create(**{**same, "model": "missing"})
    with pytest.raises(openai.RateLimitError):  # the key's rpm (6) is now spent
        for _ in range(5):
            await c.completions.create(model="dummy:tiny", prompt="x", max_tokens=1)
    await c.close()


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for t in panel["targets"]:
                out.append((path.name, panel["title"], t["expr"]))
        for var in dash["templating"]["list"]:
            if var.get("type") == "query":
                metric = var["definition"].split("(", 1)[1].split(",")[0].strip()
                out.append((path.name, f"variable {var['name']}", metric))
    return out


async def test_every_panel_query_returns_data(tiny: ModelBundle, tmp_path: Path) -> None:
    async with running_gateway(
        tiny,
        auth={"api_keys": [KEY]},
        limits={"rpm": 6},
        rag={"enabled": True, "port": 0, "data_dir": tmp_path / "rag"},
        semantic_cache={"enabled": True},
        # the speculation panels need its counters: every guess found is checked
        speculative={"method": "ngram", "guess_cost": 0.0},
    ) as server:
        prom = Prometheus(
            tmp_path,
            {
                "tessera-gateway": f"127.0.0.1:{server.port}",
                "tessera-rag": f"127.0.0.1:{server.rag_port}",
            },
        )
        try:
            await drive_traffic(server.port, server.rag_port)
            deadline = time.monotonic() + 60
            pending = panel_queries()
            assert len(pending) > 20
            while pending and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                still = []
                for dash, title, expr in pending:
                    live = expr.replace("$__rate_interval", "1m").replace("$instance", ".+")
                    try:
                        result = await prom.query(live)
                    except httpx.HTTPError:
                        result = []
                    if not result:
                        still.append((dash, title, expr))
                pending = still
            assert not pending, f"panels without data: {[(d, t) for d, t, _ in pending]}"
        finally:
            prom.stop()
