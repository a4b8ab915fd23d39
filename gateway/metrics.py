"""The gateway's part of the metric catalogue (prefix ``tessera_gateway_``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tessera.metric_buckets import E2E_BUCKETS, TTFT_BUCKETS

if TYPE_CHECKING:
    from gateway.api.common import Usage

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
TTFT_STAGES = ("gateway_queue", "cache_lookup", "retrieval", "engine_queue", "prefill")


class _EnginesCollector(Collector):
    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        healthy, total = self._counts()
        yield GaugeMetricFamily(
            "tessera_gateway_engines_healthy", "Engines passing health checks.", value=healthy
        )
        yield GaugeMetricFamily(
            "tessera_gateway_engines", "Engines known (static list or DNS).", value=total
        )


class GatewayMetrics:
    """Counters and histograms the gateway updates; engine counts read at scrape time."""

    def __init__(self, registry: CollectorRegistry, engines: Callable[[], tuple[int, int]]) -> None:
        registry.register(_EnginesCollector(engines))
        p = "tessera_gateway_"
        self.requests = Counter(
            p + "requests",
            "HTTP and gRPC requests by route and status.",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            p + "request_duration_seconds",
            "Request time, arrival to last byte.",
            ["route"],
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Arrival at the gateway to the first generated token.",
            ["route"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.ttft_stage = Histogram(
            p + "ttft_stage_seconds",
            "Time to first token by stage: gateway_queue, cache_lookup, "
            "retrieval, engine_queue, prefill.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.cache = Counter(
            p + "cache_requests",
            "Cache lookups by kind (response, semantic) and result.",
            ["kind", "result"],
            registry=registry,
        )
        self.rate_limited = Counter(
            p + "rate_limited",
            "Requests refused with 429 by limit (rpm, tpm, inflight).",
            ["limit"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            p + "upstream_errors",
            "Engine failures seen by the gateway, by kind.",
            ["kind"],
            registry=registry,
        )
        self.inflight = Gauge(
            p + "inflight_requests", "Generations in flight at this gateway.", registry=registry
        )
        self.prompt_tokens = Counter(
            p + "prompt_tokens", "Prompt tokens of finished requests.", registry=registry
        )
        self.generation_tokens = Counter(
            p + "generation_tokens", "Generated tokens of finished requests.", registry=registry
        )
        self.redis_errors = Counter(
            p + "redis_errors", "Redis operations that failed (cache, limits).", registry=registry
        )
        self.auth_failures = Counter(
            p + "auth_failures", "Requests refused for a missing or bad API key.", registry=registry
        )

    def observe_stages(self, stages: dict[str, float]) -> None:
        for stage, seconds in stages.items():
            if stage in TTFT_STAGES:
                self.ttft_stage.labels(stage).observe(max(0.0, seconds))

    def observe_generation(
        self, route: str, stages: dict[str, float], usage: Usage | None, ttft: float | None
    ) -> None:
        """A generation ended: its time to first token and stages (when a token came), and
        the tokens it used (when it ran on an engine to the end)."""
        if ttft is not None:
            self.ttft.labels(route).observe(ttft)
            self.observe_stages(stages)
        if usage is not None:
            self.prompt_tokens.inc(usage.prompt_tokens)
            self.generation_tokens.inc(usage.completion_tokens)
