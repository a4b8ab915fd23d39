"""The engine's part of the metric catalogue (prefix ``tessera_engine_``), on a given registry.

Load gauges and cumulative cache and speculation counters are read from the
engine's latest stats at scrape time; latencies and token counts are observed from request
outputs as the engine thread produces them. Buckets (tessera.metric_buckets) are
shared with the gateway's histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.api import RequestOutput
from engine.llm_engine import EngineStats, StepStats
from engine.spec_decode import SpecStats
from tessera.metric_buckets import (
    E2E_BUCKETS,
    ITL_BUCKETS,
    QUEUE_BUCKETS,
    STEP_BUCKETS,
    TOKENS_PER_STEP_BUCKETS,
    TTFT_BUCKETS,
)


class _LoadCollector(Collector):
    """Gauges and cumulative counters read from EngineStats at scrape time."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        gauges = [
            ("requests_running", "Sequences in the running batch.", s.num_running),
            ("requests_waiting", "Sequences waiting to be scheduled.", s.num_waiting),
            ("kv_cache_usage_ratio", "Fraction of KV cache blocks in use (0-1).", s.kv_usage),
            ("kv_cache_free_blocks", "KV cache blocks free or evictable.", s.num_free_blocks),
            ("kv_cache_blocks", "KV cache blocks in the pool.", s.num_blocks),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"tessera_engine_{name}", doc, value=value)
        counters = [
            (
                "prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache.",
                s.prefix_cache_queries,
            ),
            ("prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits),
            (
                "preemptions",
                "Sequences preempted (recomputed later) for lack of blocks.",
                s.num_preemptions,
            ),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(f"tessera_engine_{name}", doc, value=value)
        if s.spec is not None:
            yield from _spec_counters(s.spec)


def _spec_counters(spec: SpecStats) -> Iterator[Metric]:
    """Speculative decoding's counters, with vLLM's meanings (spec_decode_num_*).

    Present only when speculation is on, as in vLLM: an engine that never guesses has no
    acceptance to report, and zeros would read as "guessing and always wrong". Like vLLM, no
    mean-acceptance-length gauge: a since-start average can neither be windowed nor summed
    across pods, while the counters give both in PromQL (the engine dashboard):
    acceptance rate = rate(accepted_tokens) / rate(draft_tokens); mean acceptance length =
    1 + rate(accepted_tokens) / rate(drafts); position i's rate =
    rate(accepted_tokens_per_position{position="i"}) / rate(drafts).
    """
    counters = [
        ("drafts", "Verification steps of one sequence's guessed tokens.", spec.drafts),
        ("draft_tokens", "Guessed tokens checked by the model.", spec.draft_tokens),
        ("accepted_tokens", "Guessed tokens the model kept.", spec.accepted_tokens),
    ]
    for name, doc, value in counters:
        yield CounterMetricFamily(f"tessera_engine_spec_{name}", doc, value=value)
    per_position = CounterMetricFamily(
        "tessera_engine_spec_accepted_tokens_per_position",
        "Guessed tokens kept, by their position in the guess (0 = the first guessed token).",
        labels=["position"],
    )
    for i, count in enumerate(spec.accepted_per_position):
        per_position.add_metric([str(i)], count)
    yield per_position


class EngineMetrics:
    """Observes steps and request outputs (a StepObserver) and exports load at scrape time."""

    def __init__(self, registry: CollectorRegistry, stats: Callable[[], EngineStats]) -> None:
        registry.register(_LoadCollector(stats))
        p = "tessera_engine_"
        self.prompt_tokens = Counter(
            p + "prompt_tokens",
            "Prompt tokens of requests that started generating.",
            registry=registry,
        )
        self.generation_tokens = Counter(
            p + "generation_tokens", "Generated tokens.", registry=registry
        )
        self.finished = Counter(
            p + "requests_finished",
            "Finished completions by reason (stop, length, abort); n>1 counts n.",
            ["reason"],
            registry=registry,
        )
        self.rpc_errors = Counter(
            p + "rpc_errors",
            "gRPC calls that ended in an error status (RESOURCE_EXHAUSTED is back-pressure).",
            ["method", "code"],
            registry=registry,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Arrival at the engine to the first generated token.",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            p + "inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            p + "e2e_request_latency_seconds",
            "Arrival at the engine to the request's last token.",
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.queue_time = Histogram(
            p + "request_queue_time_seconds",
            "Arrival at the engine to first being scheduled.",
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self.tokens_per_step = Histogram(
            p + "tokens_per_step",
            "Tokens (prefill and decode) processed by one engine step.",
            buckets=TOKENS_PER_STEP_BUCKETS,
            registry=registry,
        )
        self.step_time = Histogram(
            p + "step_duration_seconds",
            "Wall time of one engine step (schedule, execute, update).",
            buckets=STEP_BUCKETS,
            registry=registry,
        )

    # ---- StepObserver ----------------------------------------------------
    def on_step(self, step: StepStats, stats: EngineStats) -> None:
        if step.num_batched_tokens:
            self.tokens_per_step.observe(step.num_batched_tokens)
            self.step_time.observe(step.seconds)

    def on_outputs(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            self._observe(out)

    def _observe(self, out: RequestOutput) -> None:
        new_tokens = sum(len(d.token_ids) for d in out.deltas)
        if new_tokens:
            self.generation_tokens.inc(new_tokens)
        t = out.timings
        if new_tokens and new_tokens == out.num_output_tokens:  # the request's first tokens
            self.prompt_tokens.inc(out.num_prompt_tokens)
            if t.first_token is not None:
                self.ttft.observe(t.first_token)
            if t.queued is not None:
                self.queue_time.observe(t.queued)
        for d in out.deltas:
            if d.finish_reason is not None:
                self.finished.labels(d.finish_reason.value).inc()
        if out.finished:
            if t.finished is not None:
                self.e2e.observe(t.finished)
            # completion 0's token times; observed once, when the request ends
            for a, b in zip(t.token_times, t.token_times[1:], strict=False):
                self.itl.observe(b - a)
