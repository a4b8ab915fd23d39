"""The serving benchmark harness (bench/serving*.py): its statistics on synthetic timings,
its workloads and Poisson schedule, its streaming client against a scripted server, and one
tiny real run against `tessera serve` on the default model."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.serving_load import (
    SHARED_SYSTEM_PROMPT,
    Target,
    fixed_chats,
    poisson_arrivals,
    run_point,
    shared_prefix_chats,
)
from bench.serving_report import END, START, readme_section, update_readme
from bench.serving_stats import SLO, RequestResult, percentile, summarize


def result(
    ttft: float, gaps: list[float], usage: int | None = None, ok: bool = True
) -> RequestResult:
    """A finished request with the given first-token time and chunk gaps."""
    return RequestResult(
        ok=ok,
        ttft=ttft,
        e2e=ttft + sum(gaps),
        chunk_gaps=list(gaps),
        text_chunks=len(gaps) + 1,
        usage_completion_tokens=usage,
    )


# ---- statistics ------------------------------------------------------------------------
def test_percentile_matches_numpy_linear_interpolation() -> None:
    rng = random.Random(3)
    for n in (1, 2, 7, 100):
        xs = [rng.random() for _ in range(n)]
        for q in (0, 50, 90, 99, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert percentile([], 50) is None


def test_output_tokens_come_from_usage_else_from_text_chunks() -> None:
    assert result(0.1, [0.05] * 9, usage=12).output_tokens == 12
    assert result(0.1, [0.05] * 9).output_tokens == 10


def test_tpot_is_decode_time_over_tokens_after_the_first() -> None:
    r = result(0.5, [0.1] * 9)  # 10 tokens, e2e 1.4 s
    assert r.tpot == pytest.approx(0.9 / 9)
    assert result(0.5, []).tpot is None  # one token: no decode time


def test_summary_of_synthetic_point() -> None:
    fast = [result(0.2, [0.05] * 9, usage=10) for _ in range(3)]  # TTFT 0.2, TPOT 0.05
    slow = result(3.0, [0.05] * 9, usage=10)  # misses the TTFT SLO
    failed = RequestResult(ok=False, error="HTTP 500: boom")
    s = summarize([*fast, slow, failed], duration_s=2.0, slo=SLO(ttft_s=1.0, tpot_s=0.1))

    assert (s["requests"], s["completed"], s["errors"]) == (5, 4, 1)
    assert s["error_samples"] == ["HTTP 500: boom"]
    assert s["output_tokens"] == 40
    assert s["output_tokens_per_s"] == pytest.approx(20.0)
    assert s["requests_per_s"] == pytest.approx(2.0)
    assert s["ttft_s"]["p50"] == pytest.approx(0.2)
    assert s["ttft_s"]["p99"] == pytest.approx(float(np.percentile([0.2, 0.2, 0.2, 3.0], 99)))
    assert s["itl_s"]["p50"] == pytest.approx(0.05)  # 36 gaps pooled
    assert s["e2e_s"]["p50"] == pytest.approx(0.2 + 0.45)
    assert s["token_count_source"] == "usage"
    g = s["goodput"]
    assert g["good_requests"] == 3
    assert g["requests_per_s"] == pytest.approx(1.5)
    assert g["output_tokens_per_s"] == pytest.approx(15.0)
    assert g["fraction"] == pytest.approx(3 / 5)


def test_goodput_excludes_requests_over_the_itl_slo() -> None:
    slo = SLO(ttft_s=1.0, tpot_s=0.1)
    assert slo.met_by(result(0.5, [0.09] * 5))
    assert not slo.met_by(result(0.5, [0.2] * 5))
    assert not slo.met_by(result(0.5, [0.01] * 5, ok=False))


def test_summary_with_no_successful_request_has_empty_distributions() -> None:
    s = summarize([RequestResult(ok=False, error="x")], 1.0, SLO(1.0, 0.1))
    assert s["ttft_s"]["p50"] is None and s["output_tokens_per_s"] == 0.0
    assert s["goodput"]["fraction"] == 0.0


# ---- workloads and schedules -----------------------------------------------------------
def test_fixed_chats_are_distinct_single_turns_of_similar_length() -> None:
    a, b = fixed_chats(32, salt=1), fixed_chats(32, salt=33)
    turns = [s.user_turns for s in a + b]
    assert all(len(t) == 1 for t in turns)
    assert len({t[0] for t in turns}) == 64  # no two requests of a run share their prompt
    words = [len(t[0].split()) for t in turns]
    assert min(words) >= 20 and max(words) <= 35  # ~55 tokens with the chat template
    assert all(s.system is None for s in a)  # the model's own default system prompt


def test_multiturn_sessions_share_one_system_prompt_per_point() -> None:
    point = shared_prefix_chats(8, turns=3, salt=5)
    other = shared_prefix_chats(8, turns=3, salt=13)
    assert {s.system for s in point} == {point[0].system}
    assert point[0].system != other[0].system
    assert point[0].system is not None and point[0].system.endswith(SHARED_SYSTEM_PROMPT)
    assert len(SHARED_SYSTEM_PROMPT.split()) > 150  # long enough to span many KV blocks
    assert all(len(s.user_turns) == 3 for s in point)
    assert len({s.user_turns[0] for s in point}) == 8


def test_poisson_arrivals_have_the_asked_rate_and_are_reproducible() -> None:
    xs = poisson_arrivals(4.0, 4000, seed=1)
    assert all(b > a for a, b in itertools.pairwise(xs))
    gaps = np.diff([0.0, *xs])
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)
    assert gaps.std() == pytest.approx(0.25, rel=0.1)  # exponential: std == mean
    assert poisson_arrivals(4.0, 10, seed=1) == xs[:10]
    assert poisson_arrivals(4.0, 10, seed=2) != xs[:10]
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, 3)


# ---- the streaming client against a scripted server ------------------------------------
def sse_server(
    tokens: int = 5, gap: float = 0.01, usage: bool = True, status: int = 200
) -> tuple[httpx.MockTransport, list[dict[str, Any]]]:
    """An OpenAI-style SSE endpoint: a role chunk, `tokens` text chunks, usage, [DONE]."""
    bodies: list[dict[str, Any]] = []

    async def stream() -> AsyncIterator[bytes]:
        def data(obj: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(obj)}\n\n".encode()

        yield data({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for i in range(tokens):
            await asyncio.sleep(gap)
            yield data({"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]})
        if usage:
            yield data({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": tokens}})
        yield b"data: [DONE]\n\n"

    async def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if status != 200:
            return httpx.Response(status, json={"detail": "Unexpected fields: ignore_eos"})
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream())

    return httpx.MockTransport(handler), bodies


def run(
    target: Target, transport: httpx.MockTransport, **kw: Any
) -> tuple[list[RequestResult], float]:
    return asyncio.run(run_point(target, fixed_chats(kw.pop("n", 2)), 5, transport=transport, **kw))


def test_client_times_text_chunks_and_reads_usage() -> None:
    transport, bodies = sse_server(tokens=5, gap=0.02)
    target = Target("http://x/v1", "m", eos_control="ignore_eos")
    results, _ = run(target, transport, concurrency=1)
    r = results[0]
    assert r.ok and r.text == "t0 t1 t2 t3 t4 "
    assert r.text_chunks == 5 and len(r.chunk_gaps) == 4
    assert r.usage_completion_tokens == 5 and r.usage_prompt_tokens == 7
    assert r.ttft is not None and r.ttft >= 0.015  # the role-only chunk does not count
    assert all(g >= 0.015 for g in r.chunk_gaps)
    body = bodies[0]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.0 and body["ignore_eos"] and body["min_tokens"] == 5


def test_capability_flags_decide_the_fields_sent() -> None:
    plain = Target("u", "m").request_body([], 8)
    assert "ignore_eos" not in plain and "logit_bias" not in plain
    banned = Target("u", "m", eos_control="logit_bias", eos_token_ids=(0, 2)).request_body([], 8)
    assert banned["logit_bias"] == {"0": -100.0, "2": -100.0} and "min_tokens" not in banned
    # transformers serve turns logit_bias into a sequence bias that must be floats (500 else)
    assert all(isinstance(v, float) for v in banned["logit_bias"].values())


def test_server_errors_are_recorded_not_raised() -> None:
    transport, _ = sse_server(status=422)
    results, _ = run(Target("http://x/v1", "m"), transport, concurrency=2, n=3)
    assert len(results) == 3 and not any(r.ok for r in results)
    assert all(r.error and r.error.startswith("HTTP 422") for r in results)


def test_chunks_are_counted_when_the_server_sends_no_usage() -> None:
    transport, _ = sse_server(tokens=4, gap=0.0, usage=False)
    results, duration = run(Target("http://x/v1", "m"), transport, concurrency=1)
    s = summarize(results, duration, SLO(10, 10))
    assert s["token_count_source"] == "chunks" and s["output_tokens"] == 8


def test_open_loop_starts_requests_on_the_poisson_schedule() -> None:
    transport, _ = sse_server(tokens=1, gap=0.0)
    arrivals = [0.0, 0.15, 0.3]
    t0 = time.perf_counter()
    results, duration = run(Target("http://x/v1", "m"), transport, arrivals=arrivals, n=3)
    starts = sorted(r.start - t0 for r in results)
    for got, want in zip(starts, arrivals, strict=True):
        assert want <= got < want + 0.1
    assert duration >= 0.3


def test_multiturn_session_sends_the_replies_so_far() -> None:
    transport, bodies = sse_server(tokens=2, gap=0.0)
    sessions = shared_prefix_chats(1, turns=3)
    asyncio.run(
        run_point(Target("http://x/v1", "m"), sessions, 2, concurrency=1, transport=transport)
    )
    roles = [[m["role"] for m in b["messages"]] for b in bodies]
    assert roles == [
        ["system", "user"],
        ["system", "user", "assistant", "user"],
        ["system", "user", "assistant", "user", "assistant", "user"],
    ]
    assert bodies[1]["messages"][2]["content"] == "t0 t1 "


# ---- report ------------------------------------------------------------------------------
def fake_results(points: Callable[[str], list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "date": "2026-11-23T10:00:00+00:00",
        "command": "python bench/serving.py",
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "machine": {"cpu_model": "AMD EPYC", "cores": 2, "memory_gib": 23.4},
        "model": {"gguf": "/x/SmolLM2-135M-Instruct.Q4_1.gguf"},
        "config": {
            "workload": {"kind": "fixed", "num_requests": 32, "max_tokens": 128},
            "sweep": {"rates": []},
            "slo": {"ttft": 2.0, "itl": 0.2},
        },
        "servers": [
            {"name": n, "status": "ok", "error": None, "points": points(n)}
            for n in ("tessera-embedded", "llama.cpp")
        ]
        + [{"name": "transformers", "status": "error", "error": "exited with 1", "points": []}],
    }


def test_readme_section_replaces_only_the_marked_block(tmp_path: Path) -> None:
    slo = SLO(2.0, 0.2)

    def points(name: str) -> list[dict[str, Any]]:
        speed = 2.0 if name.startswith("tessera") else 1.0
        out = []
        for c in (1, 32):
            rs = [result(0.1, [0.05 / speed] * 9, usage=10) for _ in range(c)]
            out.append({"concurrency": c, "rate": None, **summarize(rs, c / speed, slo)})
        return out

    section = readme_section(fake_results(points), "bench/results/x.json", "bench/results/x.png")
    assert section.startswith(START) and section.endswith(END)
    assert "| tessera-embedded | 20.0 | 20.0 |" in section  # c=1, c=32 tok/s
    assert "| transformers | error | error |" in section
    assert "2.00x llama.cpp's output tokens/s" in section
    assert "single-stream decode 2.00x llama.cpp's" in section
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nbefore\n{START}\nold\n{END}\nafter\n")
    update_readme(readme, section)
    text = readme.read_text()
    assert text.startswith("# T\n\nbefore\n") and text.endswith("\nafter\n")
    assert "old" not in text and text.count(START) == 1


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.serving_report import plot

    def points(name: str) -> list[dict[str, Any]]:
        rs = [result(0.1, [0.05] * 9, usage=10)]
        return [{"concurrency": c, "rate": None, **summarize(rs, 1.0, SLO(2, 0.2))} for c in (1, 4)]

    png = plot(fake_results(points), tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the command line and one real run ---------------------------------------------------
def test_tessera_bench_serve_flags_build_the_config() -> None:
    from bench.serving import BenchConfig
    from tessera.cli import build_parser
    from tessera.cli_args import settings_overrides

    args = build_parser().parse_args(
        ["bench", "serve", "--server", "llama.cpp", "--concurrency", "1", "--concurrency", "4",
         "--slo-ttft", "1.5", "--slo-itl", "0.1", "--workload", "multiturn", "--rate", "0.5"]
    )  # fmt: skip
    config = BenchConfig(**settings_overrides(args))
    assert config.sweep.servers == ["llama.cpp"] and config.sweep.concurrency == [1, 4]
    assert (config.slo.ttft, config.slo.itl) == (1.5, 0.1)
    assert config.workload.kind == "multiturn" and config.sweep.rates == [0.5]
    assert BenchConfig().sweep.concurrency == [1, 4, 16, 32, 64]


def llama_server(tmp_path: Path, **kw: Any) -> Any:
    from bench.serving_servers import BenchPaths, LlamaCppServer

    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    paths = BenchPaths(gguf, tmp_path / "cache", tmp_path / "logs", tmp_path / "venv/bin/python")
    return LlamaCppServer(name="llama.cpp", paths=paths, **kw)


def test_llama_server_gets_one_slot_per_request_in_flight(tmp_path: Path) -> None:
    server = llama_server(tmp_path, max_in_flight=64, extra_args=["-c", "65536"], threads=2)
    cmd = server.command(8123)
    assert cmd[0] == str(tmp_path / "venv/bin/llama-server")  # the peers venv's copy
    assert cmd[1:] == [
        "-m", str(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"),
        "--alias", "SmolLM2-135M-Instruct.Q4_1",
        "-np", "64", "-cb", "-c", str(64 * 2048), "-t", "2",
        "--host", "127.0.0.1", "--port", "8123",
        "-c", "65536",  # extra flags come last: llama-server keeps the last value
    ]  # fmt: skip
    assert server.eos_control == "logit_bias"  # like every peer, so --peer-eos none applies


def test_llama_server_missing_binary_says_how_to_build_it(tmp_path: Path) -> None:
    from bench.serving_servers import ServerStartError

    server = llama_server(tmp_path)
    with pytest.raises(ServerStartError, match=r"llama-server is missing: run .*setup_peers"):
        server.launch()
    assert server.procs == [] and server.describe()["commands"] == []


def test_sweep_sizes_the_servers_for_its_most_requests_in_flight() -> None:
    from bench.serving import BenchConfig, max_in_flight

    assert max_in_flight(BenchConfig()) == 64  # the default sweep's highest concurrency
    assert max_in_flight(BenchConfig(sweep={"concurrency": [1, 4]})) == 4
    assert (
        max_in_flight(BenchConfig(sweep={"concurrency": [1, 4]}, workload={"num_requests": 2})) == 4
    )
    open_loop = BenchConfig(sweep={"rates": [0.5, 2.0]}, workload={"num_requests": 12})
    assert max_in_flight(open_loop) == 12  # a Poisson point may have every session in flight


def test_tiny_real_run_against_tessera_serve(tmp_path: Path) -> None:
    from bench.serving import BenchConfig, run_benchmark

    config = BenchConfig(
        workload={"num_requests": 2, "max_tokens": 8},
        sweep={"servers": ["tessera-embedded"], "concurrency": [1, 2], "warmup_requests": 1},
        launch={
            "tessera_args": "--kv-cache-memory 256MiB --max-model-len 1024 --no-native-kernels"
        },
        output={"out": str(tmp_path / "serving.json"), "plot": False},
    )
    results, out = run_benchmark(config, "pytest")
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["machine"]["cores"] >= 1 and results["git"]["commit"]
    (server,) = results["servers"]
    assert server["status"] == "ok", server["error"]
    assert [p["concurrency"] for p in server["points"]] == [1, 2]
    for p in server["points"]:
        assert p["requests"] == 2 and p["errors"] == 0
        assert p["output_tokens"] == 16  # ignore_eos + min_tokens: exactly max_tokens each
        assert p["token_count_source"] == "usage"
        assert 40 <= p["prompt_tokens_mean"] <= 75  # the ~55-token chats of the issue
        assert 0 < p["ttft_s"]["p50"] <= p["ttft_s"]["p99"] < p["e2e_s"]["p99"] < 60
        assert 0 < p["itl_s"]["p50"] < 5 and p["output_tokens_per_s"] > 0
        assert p["goodput"]["good_requests"] <= p["completed"]
        assert [r["output_tokens"] for r in p["per_request"]] == [8, 8]
    assert "tessera" in server["commands"][0] and "--no-rag" in server["commands"][0]
