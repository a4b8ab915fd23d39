"""Structured outputs' cost at 32 concurrent chats on the default model, in one process:
unconstrained vs every chat constrained to a JSON schema (output tokens per second), the
grammar compile time and the first token's time for a new schema and for a cached one, and
how often a constrained answer parses and validates.

    python bench/structured_outputs.py --rounds 3 --out bench/results/structured-outputs-DATE.md

Rounds alternate the two modes. Run it on a quiet machine: these are timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_info, write_report
from engine.api import SamplingParams, StructuredOutputs
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "maxLength": 24},
        "population": {"type": "integer", "minimum": 0},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
    },
    "required": ["city", "country", "population", "landmarks"],
    "additionalProperties": False,
}
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Rome"]


def prompts(engine: LLMEngine, n: int) -> list[str]:
    tok = engine.tokenizer
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": f"Describe {CITIES[i % len(CITIES)]} as JSON ({i})."}],
            True,
        )
        for i in range(n)
    ]


def run(
    engine: LLMEngine, texts: list[str], params: SamplingParams
) -> tuple[float, int, list[str]]:
    t0 = time.perf_counter()
    results = engine.generate(texts, params)
    seconds = time.perf_counter() - t0
    outs = [c.text for r in results for c in r.completions]
    tokens = sum(len(c.token_ids) for r in results for c in r.completions)
    return seconds, tokens, outs


def valid(text: str) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return (
        isinstance(doc, dict)
        and set(doc) == set(SCHEMA["required"])  # type: ignore[arg-type]
        and isinstance(doc["population"], int)
        and len(doc["landmarks"]) <= 3
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--quantization", default="int8")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    engine = LLMEngine(
        EngineConfig(backend={"name": args.backend, "quantization": args.quantization})
    )
    texts = prompts(engine, args.concurrency)
    spec = StructuredOutputs.json_schema(SCHEMA)
    free = SamplingParams(max_tokens=args.max_tokens, temperature=0.7, seed=1)
    constrained = SamplingParams(
        max_tokens=args.max_tokens, temperature=0.7, seed=1, structured_outputs=spec
    )
    # compile: a new schema, then the cached one
    t0 = time.perf_counter()
    engine.grammars.compile(spec)
    compile_new = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.grammars.compile(spec)
    compile_cached = time.perf_counter() - t0
    run(engine, texts[:2], free)  # warm-up
    rates: dict[str, list[float]] = {"unconstrained": [], "json schema": []}
    outputs: list[str] = []
    for _ in range(args.rounds):
        s, n, _ = run(engine, texts, free)
        rates["unconstrained"].append(n / s)
        s, n, outs = run(engine, texts, constrained)
        rates["json schema"].append(n / s)
        outputs += outs
    # time to first token of one chat alone: a schema never seen vs the cached one
    ttft = {}
    for label, schema in (
        ("new schema", {**SCHEMA, "title": f"t{time.time()}"}),
        ("cached schema", SCHEMA),
    ):
        one = SamplingParams(max_tokens=1, structured_outputs=StructuredOutputs.json_schema(schema))
        t0 = time.perf_counter()
        engine.grammars.compile(one.structured_outputs)  # type: ignore[arg-type]
        engine.generate(texts[:1], one)
        ttft[label] = time.perf_counter() - t0
    ok = sum(valid(t) for t in outputs)
    med = {k: statistics.median(v) for k, v in rates.items()}
    m = machine_info()
    lines = [
        "# Structured outputs at 32 concurrent chats",
        "",
        f"Command: `python bench/structured_outputs.py {' '.join(sys.argv[1:])}`",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, ISA {m.get('isa')}; backend "
        f"{engine.capacity.backend} {engine.capacity.quantization}; {args.rounds} alternated "
        "rounds, medians; output tokens per second over the whole batch.",
        "",
        "| mode | output tok/s | vs unconstrained |",
        "| --- | --- | --- |",
        *(f"| {k} | {v:.1f} | {v / med['unconstrained']:.2f}x |" for k, v in med.items()),
        "",
        f"Grammar compile (xgrammar): new schema {compile_new * 1000:.1f} ms, cached "
        f"{compile_cached * 1000:.3f} ms.",
        f"One chat's first token incl. compile: new schema {ttft['new schema'] * 1000:.0f} ms, "
        f"cached schema {ttft['cached schema'] * 1000:.0f} ms.",
        f"Validity: {ok}/{len(outputs)} constrained answers parse and validate "
        "(answers cut at max_tokens count as invalid).",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
