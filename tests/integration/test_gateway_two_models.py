"""Two engine pods serving different models behind one gateway: /v1/models lists both and
each request reaches the engine that serves the model it names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from engine.model_source import load_model
from gateway.server import GatewayServer
from tests.family_models import build_family_model
from tests.integration.processes import EngineProcess, gateway_over

DUMMY = "dummy:tiny"
FAMILY = "tiny-qwen3"  # a Hugging Face directory is served under its folder's name


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, EngineProcess]]:
    folder: Path = tmp_path_factory.mktemp("models") / FAMILY
    build_family_model("qwen3", folder, load_model(DUMMY))
    procs = {DUMMY: EngineProcess().start(), FAMILY: EngineProcess().start("--model", str(folder))}
    try:
        for p in procs.values():
            p.wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture
async def gateway(engines: dict[str, EngineProcess]) -> AsyncIterator[GatewayServer]:
    # Round robin: were the model ignored, requests would alternate between the engines.
    server = await gateway_over(list(engines.values()), "round_robin")
    assert isinstance(server, GatewayServer)
    yield server
    await server.stop()


async def test_models_lists_both_and_requests_reach_their_engine(
    gateway: GatewayServer, engines: dict[str, EngineProcess]
) -> None:
    served_by = {e.info.model: e for e in gateway.gateway.pool.endpoints.values() if e.info}
    assert set(served_by) == {DUMMY, FAMILY}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
        listed = (await http.get("/v1/models")).json()["data"]
        assert {m["id"] for m in listed if m.get("kind") == "generation"} == {DUMMY, FAMILY}
        plan = [DUMMY, FAMILY, FAMILY, DUMMY, FAMILY]
        for i, model in enumerate(plan):  # distinct prompts: no response-cache hits
            r = await http.post(
                "/v1/completions",
                json={"model": model, "prompt": f"Once upon {i}", "max_tokens": 3},
            )
            assert r.status_code == 200, r.text
            assert r.json()["model"] == model
        missing = await http.post(
            "/v1/completions", json={"model": "gemma3-270m", "prompt": "x", "max_tokens": 1}
        )
    assert missing.status_code == 404
    assert {m: served_by[m].served for m in served_by} == {DUMMY: 2, FAMILY: 3}
    # The engines' own counters agree: each generated only for its model's requests.
    for model, proc in engines.items():
        tokens = proc.metric("tessera_engine_generation_tokens_total")
        assert tokens == 3 * plan.count(model), model
