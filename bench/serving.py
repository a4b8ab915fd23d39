"""Serving benchmark: Tessera and the servers users would pick instead, through the same
OpenAI streaming API, on the same model file and prompts, in one run.

For each server: start it on a free port, warm it up, sweep the load (concurrency levels,
closed loop; or Poisson request rates, open loop), stop it. Per point: output tokens/s,
requests/s, TTFT p50/p90/p99, inter-token latency p50/p99, end-to-end p50/p99, errors and
goodput under the stated SLO. Writes bench/results/serving-<date>.json and a PNG plot.

    .venv/bin/python bench/serving.py                          # every server, the default sweep
    .venv/bin/python bench/serving.py --server tessera-embedded --concurrency 1 --concurrency 4
    .venv/bin/tessera bench serve --help                       # the same flags

Peers (transformers, llama.cpp) need `bash bench/setup_peers.sh` first. Run on a quiet
machine: anything else running makes the figures void.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

if __package__ in (None, ""):  # run as a script: make `bench` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_info
from bench.serving_load import (
    Session,
    Target,
    fixed_chats,
    poisson_arrivals,
    run_point,
    shared_prefix_chats,
    stream_chat,
)
from bench.serving_servers import REPO, SERVERS, BenchPaths, Server
from bench.serving_stats import SLO, RequestResult, summarize
from tessera.cli_args import add_settings_flags, flag_for, settings_overrides

RESULTS_DIR = REPO / "bench" / "results"


class WorkloadConfig(BaseModel):
    """What each request asks for."""

    kind: Literal["fixed", "multiturn"] = Field(
        "fixed",
        description="fixed: single-turn synthetic chats (~55 prompt tokens); multiturn: "
        "conversations sharing one ~250-token system prompt, turns sent in order",
        json_schema_extra={"flag": "workload"},
    )
    num_requests: int = Field(
        32, ge=1, description="sessions per point (at least the concurrency, closed loop)"
    )
    max_tokens: int = Field(128, ge=1, description="output tokens asked per request")
    turns: int = Field(3, ge=1, description="user turns per multiturn session")
    seed: int = Field(0, description="seed of the Poisson schedule")


class SweepConfig(BaseModel):
    """Which servers, and the load points each is swept over."""

    servers: list[str] = Field(
        list(SERVERS),
        description=f"servers to run, in order (repeat the flag): {', '.join(SERVERS)}",
        json_schema_extra={"flag": "server"},
    )
    concurrency: list[int] = Field(
        [1, 4, 16, 32, 64],
        description="concurrent sessions, closed loop (repeat the flag)",
    )
    rates: list[float] = Field(
        [],
        description="Poisson request rates per second, open loop (repeat the flag); "
        "given, they replace the concurrency sweep",
        json_schema_extra={"flag": "rate"},
    )
    max_duration: float | None = Field(
        None, description="seconds per point after which no new session starts"
    )
    request_timeout: float = Field(600.0, description="seconds one request may take")
    warmup_requests: int = Field(
        2,
        ge=0,
        description="short requests sent one by one before the sweep, then as many at once "
        "as the highest concurrency (servers pay first-batch costs there, not in a point)",
    )


class SLOConfig(BaseModel):
    """The service-level objective that goodput counts requests against."""

    ttft: float = Field(
        2.0, description="time to first token bound (s)", json_schema_extra={"flag": "slo-ttft"}
    )
    itl: float = Field(
        0.2,
        description="bound on a request's mean inter-token latency, i.e. TPOT (s)",
        json_schema_extra={"flag": "slo-itl"},
    )


class LaunchConfig(BaseModel):
    """The model file and the servers' own flags."""

    model: str = Field("", description="GGUF file served by all; empty: bundled SmolLM2")
    tessera_args: str = Field(
        "",
        description="extra flags for tessera serve and engine, in one string: "
        "--tessera-args='--weight-dtype bfloat16'",
    )
    # On CPU, transformers sizes its paged cache from free host RAM (13.7 GiB seen on a 24 GiB
    # machine) and its per-step attention mask grows with that cache: TTFT at concurrency 1
    # fell from 7.6 s to 0.2 s with a cache sized for the workload (128 pages of 256 tokens =
    # 32k tokens, room for 64 fixed chats) and Tessera's own token budget per step (512).
    transformers_args: str = Field(
        "--cb-num-blocks 128 --cb-max-batch-tokens 512",
        description="extra flags for transformers serve (raise --cb-num-blocks for long "
        "multiturn sessions at high concurrency)",
    )
    llamacpp_args: str = Field(
        "",
        description="extra flags for llama-server (it gets one slot per request in flight "
        "and 2048 tokens of context per slot: --llamacpp-args='-c 65536' changes the total)",
    )
    peer_eos: Literal["logit_bias", "none"] = Field(
        "logit_bias",
        description="how peers are kept from stopping before max tokens: logit_bias bans "
        "their end-of-generation tokens; none sends plain requests (replies may end early)",
    )
    peers_venv: str = Field("bench/.venv-peers", description="virtualenv of the peer servers")
    bench_cache: str = Field("bench/.cache", description="converted models (git-ignored)")


class OutputConfig(BaseModel):
    """Where results go."""

    out: str | None = Field(
        None, description="results JSON (default bench/results/serving-<date>.json)"
    )
    plot: bool = Field(True, description="write a PNG plot beside the JSON (needs matplotlib)")
    log_dir: str | None = Field(None, description="server logs (default: beside the JSON)")


class BenchConfig(BaseModel):
    """The whole serving benchmark; every field is a flag."""

    workload: WorkloadConfig = WorkloadConfig()
    sweep: SweepConfig = SweepConfig()
    slo: SLOConfig = SLOConfig()
    launch: LaunchConfig = LaunchConfig()
    output: OutputConfig = OutputConfig()


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags, generated from BenchConfig (shared by the script and the CLI)."""
    add_settings_flags(parser, BenchConfig)


# ---- one server's sweep ----------------------------------------------------------------
def sessions_for(config: BenchConfig, n: int, salt: int) -> list[Session]:
    w = config.workload
    if w.kind == "multiturn":
        return shared_prefix_chats(n, turns=w.turns, salt=salt)
    return fixed_chats(n, salt=salt)


def load_points(config: BenchConfig) -> list[dict[str, Any]]:
    """The sweep as (concurrency | rate, sessions) points, the same for every server."""
    w, s = config.workload, config.sweep
    if s.rates:
        return [{"rate": r, "concurrency": None, "sessions": w.num_requests} for r in s.rates]
    return [
        {"rate": None, "concurrency": c, "sessions": max(w.num_requests, c)} for c in s.concurrency
    ]


def max_in_flight(config: BenchConfig) -> int:
    """The most requests of the sweep in flight at once: the highest concurrency (closed
    loop), or every session of a point (open loop), and the warm-up burst is no larger."""
    return max(p["concurrency"] or p["sessions"] for p in load_points(config))


async def warm_up(target: Target, n: int, burst: int, timeout_s: float) -> None:
    """n short requests one by one, then `burst` at once; raises if any fails."""
    import httpx

    def msgs(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Warm-up {i}: say hello."}]

    limits = httpx.Limits(max_connections=burst + 4)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        results = [await stream_chat(client, target, msgs(i), 8) for i in range(n)]
        if n and burst > 1:
            results += await asyncio.gather(
                *(stream_chat(client, target, msgs(n + i), 8) for i in range(burst))
            )
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} warm-up request(s) failed: {failed[0]}")


def run_point_for(config: BenchConfig, target: Target, point: dict[str, Any], salt: int) -> Any:
    sessions = sessions_for(config, point["sessions"], salt)
    arrivals = None
    if point["rate"] is not None:
        arrivals = poisson_arrivals(point["rate"], len(sessions), seed=config.workload.seed)
    return asyncio.run(
        run_point(
            target,
            sessions,
            config.workload.max_tokens,
            concurrency=point["concurrency"],
            arrivals=arrivals,
            timeout_s=config.sweep.request_timeout,
            max_duration_s=config.sweep.max_duration,
        )
    )


def bench_server(server: Server, config: BenchConfig) -> dict[str, Any]:
    """Start, warm up, sweep and stop one server; a failure is recorded, never raised."""
    entry: dict[str, Any] = {"name": server.name, "status": "ok", "error": None, "points": []}
    slo = SLO(ttft_s=config.slo.ttft, tpot_s=config.slo.itl)
    entry["load_average_before"] = os.getloadavg()
    t0 = time.perf_counter()
    try:
        target = server.launch()
        entry["startup_s"] = time.perf_counter() - t0
        entry["model"] = target.model
        points = load_points(config)
        burst = max(p["concurrency"] or 1 for p in points)
        s = config.sweep
        asyncio.run(warm_up(target, s.warmup_requests, burst, s.request_timeout))
        step = max(p["sessions"] for p in points)
        for i, point in enumerate(points):
            results, duration = run_point_for(config, target, point, salt=1 + i * step)
            summary = summarize(results, duration, slo)
            load = {"concurrency": point["concurrency"], "rate": point["rate"]}
            entry["points"].append({**load, **summary, "per_request": per_request(results)})
            print(point_line(server.name, entry["points"][-1]), flush=True)
    except Exception as e:  # a server that fails is a result of the run, not its end
        entry["status"] = "error"
        entry["error"] = f"{type(e).__name__}: {e}"[:2000]
        print(f"{server.name}: ERROR {entry['error']}", file=sys.stderr, flush=True)
    finally:
        entry.update(server.describe())
        server.stop()
    return entry


def per_request(results: list[RequestResult]) -> list[dict[str, Any]]:
    """Each request's own figures (start offset, TTFT, e2e, tokens), to look into outliers."""
    t0 = min((r.start for r in results), default=0.0)
    return [
        {
            "start_s": round(r.start - t0, 4),
            "ttft_s": r.ttft,
            "e2e_s": r.e2e,
            "output_tokens": r.output_tokens if r.ok else None,
            "error": r.error,
        }
        for r in results
    ]


def point_line(name: str, p: dict[str, Any]) -> str:
    load = f"c={p['concurrency']}" if p["rate"] is None else f"rate={p['rate']}/s"
    ttft = p["ttft_s"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    return (
        f"{name:18s} {load:>9s}  {p['output_tokens_per_s']:7.1f} tok/s  "
        f"{p['requests_per_s']:5.2f} req/s  TTFT p50 {fmt(ttft['p50'])} p99 {fmt(ttft['p99'])} s  "
        f"ITL p50 {fmt(p['itl_s']['p50'])} s  errors {p['errors']}/{p['requests']}  "
        f"out/req {fmt(p['output_tokens_mean'])}"
    )


# ---- the run ----------------------------------------------------------------------------
def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno"))}


def versions(peers_python: Path) -> dict[str, str]:
    """Versions of the serving packages: Tessera's venv, then the peers' venv."""
    script = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for p in ('torch', 'transformers', 'llama_cpp_python', 'tessera'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    out: dict[str, str] = {}
    for label, py in (("tessera_venv", sys.executable), ("peers_venv", str(peers_python))):
        try:
            res = subprocess.run([py, "-c", script], capture_output=True, text=True, timeout=60)
            for k, v in json.loads(res.stdout or "{}").items():
                out[f"{label}:{k}"] = v
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
    return out


def default_out(now: datetime.datetime) -> Path:
    return RESULTS_DIR / f"serving-{now:%Y-%m-%d}.json"


def resolve_paths(config: BenchConfig, log_dir: Path) -> BenchPaths:
    from engine.model_source import default_model_path

    launch = config.launch
    gguf = Path(launch.model).resolve() if launch.model else default_model_path()
    return BenchPaths(
        gguf=gguf,
        cache_dir=(REPO / launch.bench_cache).resolve(),
        log_dir=log_dir,
        # absolute, not resolved: the venv's python is a symlink to the base interpreter
        peers_python=(REPO / launch.peers_venv / "bin" / "python").absolute(),
    )


def run_benchmark(config: BenchConfig, command: str) -> tuple[dict[str, Any], Path]:
    """Every server's sweep, in order; writes the JSON after each server and returns it."""
    unknown = [s for s in config.sweep.servers if s not in SERVERS]
    if unknown:
        raise ValueError(f"unknown server(s) {unknown}; choose from {list(SERVERS)}")
    now = datetime.datetime.now().astimezone()
    out = Path(config.output.out) if config.output.out else default_out(now)
    log_dir = Path(config.output.log_dir) if config.output.log_dir else out.with_suffix(".logs")
    paths = resolve_paths(config, log_dir)
    extra = {
        "tessera-embedded": config.launch.tessera_args,
        "tessera-split": config.launch.tessera_args,
        "transformers": config.launch.transformers_args,
        "llama.cpp": config.launch.llamacpp_args,
    }
    results: dict[str, Any] = {
        "schema": 1,
        "date": now.isoformat(timespec="seconds"),
        "command": command,
        "git": git_info(),
        "machine": machine_info(),
        "versions": versions(paths.peers_python),
        "model": {"gguf": str(paths.gguf)},
        "config": config.model_dump(),
        "servers": [],
    }
    in_flight = max_in_flight(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in config.sweep.servers:
        server = SERVERS[name](
            name=name, paths=paths, extra_args=shlex.split(extra[name]), max_in_flight=in_flight
        )
        if server.eos_control == "logit_bias":
            server.eos_control = config.launch.peer_eos
        results["servers"].append(bench_server(server, config))
        out.write_text(json.dumps(results, indent=1) + "\n")
    return results, out


def run_cli(args: argparse.Namespace, command: str) -> int:
    """Run from parsed flags (the script and `tessera bench serve`); returns the exit code."""
    try:
        config = BenchConfig(**settings_overrides(args))
    except ValidationError as e:
        detail = e.errors()[0]
        flag = flag_for(BenchConfig, tuple(detail["loc"]))
        print(f"error: {flag}: {detail['msg']}", file=sys.stderr)
        return 2
    try:
        results, out = run_benchmark(config, command)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"results: {out}")
    if config.output.plot:
        from bench.serving_report import plot

        try:
            print(f"plot: {plot(results, out.with_suffix('.png'))}")
        except ImportError:
            print("plot skipped: matplotlib is not installed (pip install -e '.[bench]')")
    failed = [s["name"] for s in results["servers"] if s["status"] != "ok"]
    if failed:  # recorded in the results; the run itself succeeded
        print(f"servers that failed (see the results file): {', '.join(failed)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/serving.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_flags(parser)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    return run_cli(args, shlex.join(["python", "bench/serving.py", *argv]))


if __name__ == "__main__":
    sys.exit(main())
