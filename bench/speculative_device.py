"""What checking guesses costs on an accelerator (or any --device), with random weights of a
published shape: the mechanism behind speculative decoding's speed-up, without a checkpoint.

1. Step cost: one decode step of S sequences against a step that also checks k guesses for
   each (S x (1 + k) rows, every row a one-token decode over its sequence's blocks, as the
   engine verifies), after a prefill of --context tokens. Decode is bound by reading the
   weights, so on a GPU the extra rows should cost little; on 2 CPU cores they cost about a
   quarter of a step each (bench/speculative_ab.py).
2. Greedy equality and speed: the same prompts through an engine with speculation off and one
   with ngram. Random weights answer with random tokens, so the prompts repeat a span and
   acceptance says only what this model does with it; the figure that matters is whether
   greedy outputs are identical, as they must be.

    python bench/speculative_device.py --device cuda --preset llama-3-8b --out results.md
    .venv/bin/python bench/speculative_device.py --device cpu --dtype float32 \
        --quantization int8 --preset smollm2-135m --out results.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.api import SamplingParams
from engine.backend_choice import median_step_seconds
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_source import load_model
from engine.spec_decode.step_cost import decode_rows_inputs

BLOCK = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quantization", default="none", help="none, or int8 on a CPU")
    parser.add_argument("--preset", default="llama-3-8b", help="dummy model preset")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps-only", action="store_true", help="skip the greedy run")
    parser.add_argument(
        "--guesses", default="0,1,2,4,8", help="guesses per sequence to time, comma-separated"
    )
    parser.add_argument(
        "--sequences", default="1,8", help="sequences per step to time, comma-separated"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    bundle = load_model(f"dummy:{args.preset}")
    vocab = bundle.config.vocab_size

    def engine_for(method: str) -> LLMEngine:
        return LLMEngine(
            EngineConfig(
                model={"max_model_len": 2048},
                backend={"name": "torch", "device": args.device, "dtype": args.dtype,
                         "quantization": args.quantization},
                cache={"kv_cache_memory": "4GiB"},
                speculative={"method": method, "disable_by_batch_size": 0},
            ),
            bundle=bundle,
        )  # fmt: skip

    engine = engine_for("off")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    lines = [
        f"# Checking guesses on {device_name}, {datetime.date.today()}",
        "",
        f"Command: `{' '.join(sys.argv)}`  ",
        f"Model: random weights, preset {args.preset} ({bundle.config.num_parameters / 1e9:.2f}B "
        f"parameters), torch {torch.__version__}, {args.dtype}, quantization "
        f"{args.quantization}, context {args.context} tokens",
        "",
        "## Step cost",
        "",
        "Median backend step (logits on the host) against a plain decode step of the same "
        "sequences.",
        "",
        "| sequences | guesses each | rows | step ms | vs plain decode |",
        "| --- | --- | --- | --- | --- |",
    ]
    guesses = sorted({0, *(int(k) for k in args.guesses.split(","))})
    for seqs in (int(s) for s in args.sequences.split(",")):
        plain = 0.0
        for k in guesses:
            inputs = decode_rows_inputs(seqs, 1 + k, args.context, BLOCK)
            ms = median_step_seconds(engine.runner.backend, inputs, args.repeats)
            plain = plain or ms
            lines.append(
                f"| {seqs} | {k} | {seqs * (1 + k)} | {ms * 1e3:.2f} | {ms / plain:.2f}x |"
            )
            print(lines[-1], flush=True)
    if not args.steps_only:
        lines += greedy_equality(engine, engine_for("ngram"), vocab)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def greedy_equality(off: LLMEngine, ngram: LLMEngine, vocab: int) -> list[str]:
    """Report lines: the same prompts greedy through both engines."""
    # Greedy equality: prompts that repeat a random span, so lookups find candidates.
    rng = np.random.default_rng(0)
    prompts = []
    for _ in range(8):
        span = rng.integers(100, vocab, size=48).tolist()
        prompts.append(span + rng.integers(100, vocab, size=16).tolist() + span[:8])
    greedy = SamplingParams(max_tokens=96, temperature=0.0, ignore_eos=True)
    outputs, speed = {}, {}
    for m, eng in {"off": off, "ngram": ngram}.items():
        eng.generate(prompts[:1], greedy)  # warm
        t0 = time.perf_counter()
        results = eng.generate(prompts, greedy)
        seconds = time.perf_counter() - t0
        outputs[m] = [r.completions[0].token_ids for r in results]
        speed[m] = sum(map(len, outputs[m])) / seconds
    spec = ngram.stats().spec
    same = sum(a == b for a, b in zip(outputs["off"], outputs["ngram"], strict=True))
    kept = spec.accepted_tokens / spec.draft_tokens if spec and spec.draft_tokens else 0.0
    return [
        "",
        "## Greedy equality",
        "",
        f"{len(prompts)} prompts at once, 96 tokens each: outputs identical to speculation off "
        f"for {same} of {len(prompts)}; off {speed['off']:.1f} tok/s, ngram "
        f"{speed['ngram']:.1f} tok/s ({speed['ngram'] / speed['off']:.2f}x); ngram kept "
        f"{kept:.0%} of its guessed tokens (random weights: says little).",
    ]


if __name__ == "__main__":
    main()
