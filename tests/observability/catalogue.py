"""The metrics the code exports, read from the services' own registries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from engine.llm_engine import EngineStats
from engine.metrics import EngineMetrics
from engine.spec_decode import SpecStats
from gateway.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "deploy" / "prometheus" / "metrics.md"
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


@dataclass(frozen=True)
class MetricDoc:
    name: str
    type: str
    labels: tuple[str, ...]
    help: str


def _registries() -> list[CollectorRegistry]:
    engine, gateway = CollectorRegistry(), CollectorRegistry()
    # speculation on, so its families (exported only then) are in the catalogue too
    spec = SpecStats(accepted_per_position=[0])
    em = EngineMetrics(engine, lambda: EngineStats(0, 0, 0.0, 0, 0, 0, 0, 0, spec))
    em.finished.labels("stop")
    em.rpc_errors.labels("Generate", "INVALID_ARGUMENT")
    gm = GatewayMetrics(gateway, lambda: (0, 0))
    gm.requests.labels("chat", "200")
    gm.latency.labels("chat")
    gm.ttft.labels("chat")
    gm.ttft_stage.labels("prefill")
    gm.cache.labels("response", "hit")
    gm.rate_limited.labels("rpm")
    gm.upstream_errors.labels("request")
    from services.rag.collection import CollectionStats
    from services.rag.metrics import RagMetrics

    rag = CollectorRegistry()
    one = CollectionStats("docs", "u", 1, 1, 1, 384, "flat", 0, 1, 0, {})
    RagMetrics(rag, lambda: [one], lambda: 0)
    return [engine, gateway, rag]


def exported() -> dict[str, MetricDoc]:
    """Every tessera_* family the code exports: name (as exposed) -> its description."""
    docs: dict[str, MetricDoc] = {}
    for registry in _registries():
        for family in registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
            docs[name] = MetricDoc(name, family.type, tuple(labels), family.documentation)
    return docs


def series_names(name: str, kind: str) -> set[str]:
    """The series names a family exposes (histograms: _bucket, _count, _sum)."""
    if kind == "histogram":
        return {name + s for s in ("_bucket", "_count", "_sum")}
    return {name}


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\btessera_[a-z0-9_]+", text))
