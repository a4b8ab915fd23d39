"""Speculation against off, alternated over several rounds in one process, for figures
steadier than one run: each round runs every workload's four prompts --concurrency at a time
on the off engine, then on the ngram engine (speculation on at any batch size).

    .venv/bin/python bench/speculative_ab.py --rounds 4 --out bench/results/speculative-ab-DATE.md
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, write_report
from bench.speculative import NEW_TOKENS, workloads
from engine.api import SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_source import load_model

METHODS = ("off", "ngram")
PROMPTS_PER_WORKLOAD = 4


def timed_run(
    engine: LLMEngine, prompts: list[list[int]], concurrency: int
) -> tuple[float, list[list[int]]]:
    """Output tokens/s of the prompts run ``concurrency`` at a time, and their outputs."""
    engine.kv.reset_prefix_cache()
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    batches = [prompts[i : i + concurrency] for i in range(0, len(prompts), concurrency)]
    outputs, t0 = [], time.perf_counter()
    for batch in batches:
        outputs += [r.completions[0].token_ids for r in engine.generate(batch, greedy)]
    return sum(map(len, outputs)) / (time.perf_counter() - t0), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, choices=(1, 2, 4), default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    bundle = load_model(None)
    loads = {n: p[:PROMPTS_PER_WORKLOAD] for n, p in workloads(bundle.tokenizer).items()}
    engines = {
        m: LLMEngine(
            EngineConfig(
                model={"max_model_len": 2048},
                cache={"kv_cache_memory": "1GiB"},
                speculative={"method": m, "disable_by_batch_size": 0},
            ),
            bundle=bundle,
        )
        for m in METHODS
    }
    for engine in engines.values():
        timed_run(engine, loads["chat"][:1], 1)  # warm
    speeds: dict[tuple[str, str], list[float]] = {}
    same = True
    for r in range(args.rounds):
        for name, prompts in loads.items():
            outs = {}
            for m, engine in engines.items():
                tps, outs[m] = timed_run(engine, prompts, args.concurrency)
                speeds.setdefault((name, m), []).append(tps)
                print(f"round {r + 1} {name} {m}: {tps:.1f} tok/s", flush=True)
            same = same and outs["ngram"] == outs["off"]
    backend = engines["off"].capacity
    lines = [
        f"# Speculation at {args.concurrency} concurrent, alternated, {datetime.date.today()}",
        "",
        f"Command: `{' '.join(sys.argv)}`  ",
        f"Machine: {describe()}; torch {torch.__version__}; model {bundle.name}, "
        f"{backend.backend} {backend.quantization}",
        "",
        f"{PROMPTS_PER_WORKLOAD} prompts per workload, {args.concurrency} at a time, greedy, "
        f"up to {NEW_TOKENS} tokens; {args.rounds} rounds, each running off then ngram on "
        "every workload; "
        f"medians. Greedy outputs identical to off: {'yes' if same else 'NO'}.",
        "",
        "| workload | off tok/s | ngram tok/s | ngram / off | every round (off / ngram) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in loads:
        off, on = speeds[name, "off"], speeds[name, "ngram"]
        each = ", ".join(f"{a:.0f} / {b:.0f}" for a, b in zip(off, on, strict=True))
        lines.append(
            f"| {name} | {statistics.median(off):.1f} | {statistics.median(on):.1f} | "
            f"{statistics.median(on) / statistics.median(off):.2f}x | {each} |"
        )
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
