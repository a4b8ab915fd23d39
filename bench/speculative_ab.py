"""Speculation against off, paired batch by batch over several rounds in one process: each
round runs every workload's four prompts --concurrency at a time, each batch on the off engine
and then at once on the ngram engine (ngram first in odd rounds), with --disable-by-batch-size
as given (0, the default here: speculation at every batch size; the engine's own default is 1).
A round's ratio is ngram's tokens/s over off's on the same batches, seconds apart, so a machine
whose speed drifts (2 shared cores: 120 to 195 tok/s between rounds of the same engine was
seen) moves both sides of a ratio alike; the table gives the median ratio and its range.

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
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, write_report
from bench.speculative import NEW_TOKENS, stop_strings, workloads
from engine.api import SamplingParams
from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.model_source import load_model

METHODS = ("off", "ngram")
PROMPTS_PER_WORKLOAD = 4


@dataclass
class Tally:
    """What one method did on one workload in one round, summed over its batches."""

    tokens: int = 0
    seconds: float = 0.0
    decode_tokens: int = 0  # each request's tokens after its first
    decode_seconds: float = 0.0  # the seconds after each request's first token

    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def decode_speed(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


def timed_batch(
    engine: LLMEngine,
    prompts: list[list[int]],
    seeds: range,
    stop: list[str],
    temperature: float,
    tally: Tally,
) -> list[list[int]]:
    """Run the prompts together from an empty prefix cache, add their tokens and seconds to
    ``tally`` and return their outputs. Sampled runs (temperature > 0) seed each prompt by its
    place in the workload, so both engines draw the same tokens."""
    engine.kv.reset_prefix_cache()
    params = [
        SamplingParams(max_tokens=NEW_TOKENS, temperature=temperature, seed=s, stop=stop)
        for s in seeds
    ]
    outputs, t0 = [], time.perf_counter()
    for r in engine.generate(prompts, params):
        outputs.append(r.completions[0].token_ids)
        first, last = r.timings.first_token, r.timings.finished
        if first is not None and last is not None and len(outputs[-1]) > 1:
            tally.decode_tokens += len(outputs[-1]) - 1
            tally.decode_seconds += last - first
    tally.seconds += time.perf_counter() - t0
    tally.tokens += sum(map(len, outputs))
    return outputs


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
    parser.add_argument(
        "--prompt-lookup-min", type=int,
        default=SpeculativeConfig.model_fields["prompt_lookup_min"].default,
        help="--prompt-lookup-min of the ngram engine (shortest repeat that makes a guess)",
    )  # fmt: skip
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
                speculative={
                    "method": m,
                    "disable_by_batch_size": args.disable_by_batch_size,
                    "prompt_lookup_min": args.prompt_lookup_min,
                },
            ),
            bundle=bundle,
        )
        for m in METHODS
    }
    for engine in engines.values():
        timed_batch(engine, loads["chat"][:1], range(1), [], 0.0, Tally())  # warm
    # tallies[name, method]: one Tally a round
    tallies: dict[tuple[str, str], list[Tally]] = {}
    # Per workload: decode tokens (outputs less each request's first, from its prefill),
    # guessed tokens and accepted guesses, summed over the rounds.
    counts: dict[str, list[int]] = {name: [0, 0, 0] for name in loads}
    same = True
    for r in range(args.rounds):
        # Even rounds run off first, odd rounds ngram first, so neither gains from going first.
        order = METHODS if r % 2 == 0 else METHODS[::-1]
        for name, prompts in loads.items():
            round_tallies = {m: Tally() for m in METHODS}
            for i in range(0, len(prompts), args.concurrency):
                batch, seeds = prompts[i : i + args.concurrency], range(i, i + args.concurrency)
                outs = {}
                for m in order:
                    engine = engines[m]
                    before = engine.stats().spec
                    outs[m] = timed_batch(
                        engine, batch, seeds, stop[name], args.temperature, round_tallies[m]
                    )
                    after = engine.stats().spec
                    if m == "ngram" and before is not None and after is not None:
                        c = counts[name]
                        c[0] += sum(max(len(o) - 1, 0) for o in outs[m])
                        c[1] += after.draft_tokens - before.draft_tokens
                        c[2] += after.accepted_tokens - before.accepted_tokens
                same = same and outs["ngram"] == outs["off"]
            for m in METHODS:
                tallies.setdefault((name, m), []).append(round_tallies[m])
            off, on = round_tallies["off"], round_tallies["ngram"]
            print(
                f"round {r + 1} {name}: off {off.tokens_per_second():.1f} / ngram "
                f"{on.tokens_per_second():.1f} tok/s, decode {off.decode_speed():.1f} / "
                f"{on.decode_speed():.1f}",
                flush=True,
            )
    backend = engines["off"].capacity
    drawn = f"sampled at temperature {args.temperature} (seeded)" if args.temperature else "greedy"
    lines = [
        f"# Speculation at {args.concurrency} concurrent, paired, {datetime.date.today()}",
        "",
        f"Command: `{' '.join(sys.argv)}`  ",
        f"Machine: {describe()}; torch {torch.__version__}; model {bundle.name}, "
        f"{backend.backend} {backend.quantization}",
        "",
        f"{PROMPTS_PER_WORKLOAD} prompts per workload, {args.concurrency} at a time, {drawn}, "
        f"up to {NEW_TOKENS} tokens, stop strings {stop}; speculation off above "
        f"{args.disable_by_batch_size} running sequences (0: never off); {args.rounds} rounds, "
        "each running every batch on off and on ngram back to back (ngram first in odd rounds); "
        "tok/s are medians, ratios are medians of each round's paired ratio. "
        f"Outputs identical to off: {'yes' if same else 'NO'}. Tok/s: output "
        "tokens over the whole run, prefill included. Decode: each request's tokens after its "
        "first over the seconds after it (what a streaming user sees). Kept: accepted guesses "
        "/ guessed tokens. Tokens a step: decode tokens / decode steps with ngram, the decode "
        "speed-up if checking guesses were free.",
        "",
        "| workload | off tok/s | ngram tok/s | ngram / off | decode ngram / off | "
        "range over rounds | kept | tokens a step | every round (ngram / off) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in loads:
        offs, ons = tallies[name, "off"], tallies[name, "ngram"]
        ratios = [
            b.tokens_per_second() / a.tokens_per_second() for a, b in zip(offs, ons, strict=True)
        ]
        decode_ratios = [
            b.decode_speed() / a.decode_speed() for a, b in zip(offs, ons, strict=True)
        ]
        each = ", ".join(f"{x:.2f}" for x in ratios)
        decoded, guessed, accepted = counts[name]
        kept = f"{accepted / guessed:.0%}" if guessed else "-"
        per_step = decoded / (decoded - accepted) if decoded > accepted else 0.0
        s_off = statistics.median(t.tokens_per_second() for t in offs)
        s_on = statistics.median(t.tokens_per_second() for t in ons)
        lines.append(
            f"| {name} | {s_off:.1f} | {s_on:.1f} | {statistics.median(ratios):.2f}x | "
            f"{statistics.median(decode_ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x | "
            f"{kept} | {per_step:.2f} | {each} |"
        )
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
