"""Speculative decoding's counters as the engine exports them, and the banner line that says
what speculation runs."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from engine.config import SpeculativeConfig
from engine.llm_engine import EngineStats
from engine.metrics import EngineMetrics
from engine.spec_decode import SpecStats


def exported(spec: SpecStats | None) -> dict[str, float]:
    registry = CollectorRegistry()
    EngineMetrics(registry, lambda: EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0, spec))
    return {
        s.name + "".join(f"{{{v}}}" for v in s.labels.values()): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name.startswith("tessera_engine_spec_")
    }


def test_no_speculation_counters_when_speculation_is_off() -> None:
    assert exported(None) == {}


def test_speculation_counters_export_the_stats_with_one_series_per_position() -> None:
    spec = SpecStats(drafts=5, draft_tokens=12, accepted_tokens=7, accepted_per_position=[4, 2, 1])
    assert exported(spec) == {
        "tessera_engine_spec_drafts_total": 5,
        "tessera_engine_spec_draft_tokens_total": 12,
        "tessera_engine_spec_accepted_tokens_total": 7,
        "tessera_engine_spec_accepted_tokens_per_position_total{0}": 4,
        "tessera_engine_spec_accepted_tokens_per_position_total{1}": 2,
        "tessera_engine_spec_accepted_tokens_per_position_total{2}": 1,
    }


def test_banner_line_says_what_speculation_runs() -> None:
    assert SpeculativeConfig().summary() == "speculative decoding: off"
    assert SpeculativeConfig(method="ngram").summary(0.284) == (
        "speculative decoding: ngram, up to 8 tokens (as many as pay: a guessed token adds "
        "0.28 of a step, measured), prompt lookup 1..5, off above 1 running sequence"
    )
    priced = SpeculativeConfig(method="ngram", guess_cost=0.0)
    assert priced.summary() == (
        "speculative decoding: ngram, up to 8 tokens (as many as pay: a guessed token adds "
        "0.00 of a step), prompt lookup 1..5, off above 1 running sequence"
    )
    suffix = SpeculativeConfig(method="suffix", num_speculative_tokens=1, disable_by_batch_size=0)
    assert suffix.summary() == (
        "speculative decoding: suffix, up to 1 token, prompt lookup 1..5 and the last "
        "65,536 output tokens, at every batch size"
    )
