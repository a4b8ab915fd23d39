"""Speculative decoding's counters through a real Prometheus: an engine pod guessing with
n-grams serves prompts that repeat, Prometheus scrapes its /metrics, and what Prometheus
stored equals the engine's own totals (engine.stats().spec)."""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import pairwise
from pathlib import Path

import pytest

from engine.api import SamplingParams
from engine.api.grpc_client import GrpcEngineClient
from engine.config import EnginePodConfig
from engine.model_source import ModelBundle, load_model
from engine.service.server import EnginePod
from engine.spec_decode import SpecStats
from tests.observability.prometheus import Prometheus

# Repeats give the n-gram proposer guesses; tiny random weights often loop when greedy,
# which the proposer then continues from the request's own output.
PROMPTS = ["a b c d a b c d a b c d", "1 2 3 1 2 3 1 2 3", "The quick brown fox"]
GREEDY = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
K = 4


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


def expected_series(spec: SpecStats) -> dict[str, float]:
    series = {
        "tessera_engine_spec_drafts_total": spec.drafts,
        "tessera_engine_spec_draft_tokens_total": spec.draft_tokens,
        "tessera_engine_spec_accepted_tokens_total": spec.accepted_tokens,
    }
    for i, count in enumerate(spec.accepted_per_position):
        series[f"tessera_engine_spec_accepted_tokens_per_position_total{{{i}}}"] = count
    return {name: float(v) for name, v in series.items()}


async def scraped_series(prom: Prometheus) -> dict[str, float]:
    result = await prom.query('{__name__=~"tessera_engine_spec_.+"}')
    out = {}
    for r in result:
        position = r["metric"].get("position")
        name = r["metric"]["__name__"] + (f"{{{position}}}" if position is not None else "")
        out[name] = float(r["value"][1])
    return out


async def test_scraped_speculation_counters_equal_the_engine_stats(
    tiny: ModelBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.service.server")
    config = EnginePodConfig(
        model={"max_model_len": 512},
        cache={"kv_cache_memory": "64MiB", "block_size": 4},
        scheduler={"max_num_batched_tokens": 64},
        # A set guess cost: what the engine measures at start-up depends on the machine.
        speculative={"method": "ngram", "num_speculative_tokens": K, "guess_cost": 0.1},
        server={"host": "127.0.0.1", "port": 0, "metrics_port": 0},
    )
    pod = EnginePod(config, bundle=tiny)
    await pod.start()
    await pod.load()
    client = GrpcEngineClient(f"127.0.0.1:{pod.ports.grpc}")
    prom = Prometheus(tmp_path, {"tessera-engine": f"127.0.0.1:{pod.ports.http}"})
    try:
        assert (
            "speculative decoding: ngram, up to 4 tokens (as many as pay: a guessed token "
            "adds 0.10 of a step), prompt lookup 1..5, off above 1 running sequence; on torch "
            "none (cpu) greedy output can differ from off where two tokens nearly tie (its sums "
            "change with a step's rows)"
        ) in [r.getMessage() for r in caplog.records]
        # fewer sequences at once than disable_by_batch_size, so every step may guess
        for prompt in PROMPTS:
            assert len([o async for o in await client.generate(prompt, GREEDY)]) > 0
        assert pod.engine is not None
        spec = pod.engine.stats().spec
        assert spec is not None and spec.accepted_tokens > 0
        assert spec.drafts <= spec.draft_tokens <= K * spec.drafts
        assert spec.accepted_tokens <= spec.draft_tokens
        per_position = spec.accepted_per_position
        assert len(per_position) == K and sum(per_position) == spec.accepted_tokens
        assert all(a >= b for a, b in pairwise(per_position))

        expected = expected_series(spec)
        scraped: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while scraped != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            scraped = await scraped_series(prom)
        assert scraped == expected
        # the dashboard's mean acceptance length, over the same counters
        (length,) = await prom.query(
            "1 + tessera_engine_spec_accepted_tokens_total / tessera_engine_spec_drafts_total"
        )
        assert float(length["value"][1]) == pytest.approx(spec.mean_acceptance_length)
    finally:
        prom.stop()
        await client.close()
        await pod.stop()
