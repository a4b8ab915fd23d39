"""Speculation against off, alternated over several rounds in one process, for figures
steadier than one run: each round runs every workload's four prompts --concurrency at a time
on the off engine, then on the ngram engine, with --disable-by-batch-size as given (0, the
default here: speculation at every batch size; the engine's own default is 1).

Beside the speeds it reports what the ngram engine's counters say: the share of guessed
tokens kept, and the output tokens per decode step. The latter is the speed-up speculation
would give if a step that checks guesses cost no more than one that does not: the ceiling
that the workload's answers (how much of them repeats the prompt) allow.

    .venv/bin/python bench/speculative_ab.py --rounds 4 --out bench/results/speculative-ab-DATE.md
    .venv/bin/python bench/speculative_ab.py --model gemma3-270m --rounds 4 --out ...
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
from bench.speculative import NEW_TOKENS, stop_strings, workloads
from engine.api import SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_source import load_model

METHODS = ("off", "ngram")
PROMPTS_PER_WORKLOAD = 4


def timed_run(
    engine: LLMEngine,
    prompts: list[list[int]],
    concurrency: int,
    stop: list[str],
    temperature: float = 0.0,
) -> tuple[float, float, list[list[int]]]:
    """Output tokens/s of the prompts run ``concurrency`` at a time (prefill included), the
    decode speed (tokens after each request's first over the seconds after it: one request's
    tokens/s once it streams), and their outputs. Sampled runs (temperature > 0) seed each
    prompt by its place, so both engines draw the same tokens."""
    engine.kv.reset_prefix_cache()
    params = [
        SamplingParams(max_tokens=NEW_TOKENS, temperature=temperature, seed=i, stop=stop)
        for i in range(len(prompts))
    ]
    at = range(0, len(prompts), concurrency)
    batches = [(prompts[i : i + concurrency], params[i : i + concurrency]) for i in at]
    outputs, decode_tokens, decode_seconds, t0 = [], 0, 0.0, time.perf_counter()
    for batch, batch_params in batches:
        for r in engine.generate(batch, batch_params):
            outputs.append(r.completions[0].token_ids)
            first, last = r.timings.first_token, r.timings.finished
            if first is not None and last is not None and len(outputs[-1]) > 1:
                decode_tokens += len(outputs[-1]) - 1
                decode_seconds += last - first
    seconds = time.perf_counter() - t0
    decode = decode_tokens / decode_seconds if decode_seconds else 0.0
    return sum(map(len, outputs)) / seconds, decode, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, choices=(1, 2, 4), default=1)
    parser.add_argument("--model", default="", help="model spec (default: the bundled model)")
    parser.add_argument(
        "--disable-by-batch-size", type=int, default=0,
        help="--speculative-disable-by-batch-size of the ngram engine (0: always on)",
    )  # fmt: skip
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy; else seeded sampling"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    bundle = load_model(args.model or None)
    loads = {n: p[:PROMPTS_PER_WORKLOAD] for n, p in workloads(bundle.tokenizer).items()}
    stop = stop_strings(bundle.tokenizer)
    engines = {
        m: LLMEngine(
            EngineConfig(
                model={"path": args.model, "max_model_len": 2048},
                cache={"kv_cache_memory": "1GiB"},
                speculative={"method": m, "disable_by_batch_size": args.disable_by_batch_size},
            ),
            bundle=bundle,
        )
        for m in METHODS
    }
    for engine in engines.values():
        timed_run(engine, loads["chat"][:1], 1, [])  # warm
    speeds: dict[tuple[str, str], list[float]] = {}
    decode_speeds: dict[tuple[str, str], list[float]] = {}
    # Per workload: decode tokens (outputs less each request's first, from its prefill),
    # guessed tokens and accepted guesses, summed over the rounds.
    counts: dict[str, list[int]] = {name: [0, 0, 0] for name in loads}
    same = True
    for r in range(args.rounds):
        for name, prompts in loads.items():
            outs = {}
            for m, engine in engines.items():
                before = engine.stats().spec
                tps, decode, outs[m] = timed_run(
                    engine, prompts, args.concurrency, stop[name], args.temperature
                )
                speeds.setdefault((name, m), []).append(tps)
                decode_speeds.setdefault((name, m), []).append(decode)
                print(f"round {r + 1} {name} {m}: {tps:.1f} tok/s, decode {decode:.1f}", flush=True)
                after = engine.stats().spec
                if m == "ngram" and before is not None and after is not None:
                    c = counts[name]
                    c[0] += sum(max(len(o) - 1, 0) for o in outs[m])
                    c[1] += after.draft_tokens - before.draft_tokens
                    c[2] += after.accepted_tokens - before.accepted_tokens
            same = same and outs["ngram"] == outs["off"]
    backend = engines["off"].capacity
    drawn = f"sampled at temperature {args.temperature} (seeded)" if args.temperature else "greedy"
    lines = [
        f"# Speculation at {args.concurrency} concurrent, alternated, {datetime.date.today()}",
        "",
        f"Command: `{' '.join(sys.argv)}`  ",
        f"Machine: {describe()}; torch {torch.__version__}; model {bundle.name}, "
        f"{backend.backend} {backend.quantization}",
        "",
        f"{PROMPTS_PER_WORKLOAD} prompts per workload, {args.concurrency} at a time, {drawn}, "
        f"up to {NEW_TOKENS} tokens, stop strings {stop}; speculation off above "
        f"{args.disable_by_batch_size} running sequences (0: never off); {args.rounds} rounds, "
        "each running off then ngram on every workload; "
        f"medians. Outputs identical to off: {'yes' if same else 'NO'}. Tok/s: output "
        "tokens over the whole run, prefill included. Decode: each request's tokens after its "
        "first over the seconds after it (what a streaming user sees). Kept: accepted guesses "
        "/ guessed tokens. Tokens a step: decode tokens / decode steps with ngram, the decode "
        "speed-up if checking guesses were free.",
        "",
        "| workload | off tok/s | ngram tok/s | ngram / off | decode off / ngram tok/s | "
        "decode ngram / off | kept | tokens a step | every round (off / ngram tok/s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in loads:
        off, on = speeds[name, "off"], speeds[name, "ngram"]
        each = ", ".join(f"{a:.0f} / {b:.0f}" for a, b in zip(off, on, strict=True))
        decoded, guessed, accepted = counts[name]
        kept = f"{accepted / guessed:.0%}" if guessed else "-"
        per_step = decoded / (decoded - accepted) if decoded > accepted else 0.0
        d_off = statistics.median(decode_speeds[name, "off"])
        d_on = statistics.median(decode_speeds[name, "ngram"])
        lines.append(
            f"| {name} | {statistics.median(off):.1f} | {statistics.median(on):.1f} | "
            f"{statistics.median(on) / statistics.median(off):.2f}x | {d_off:.1f} / {d_on:.1f} | "
            f"{d_on / d_off:.2f}x | {kept} | {per_step:.2f} | {each} |"
        )
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
