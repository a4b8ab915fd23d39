"""Model families: Tessera's engine against Hugging Face transformers on the same weights, in
one run, and the KV memory a token takes in each family.

For each model: 32 distinct prompts (about 12 tokens each) decoded together, and one prompt
alone, NEW_TOKENS greedy tokens each (EOS ignored). transformers runs the same weights from a
Hugging Face directory written from Tessera's loaded model (float32, its CPU default; batched
generate with left padding). Tessera runs the torch backend in float32 and in int8.

    .venv/bin/python bench/families.py --model gemma3-270m --model dummy:moe-small \
        --out bench/results/families-DATE.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, write_report
from bench.serving_load import TOPICS
from engine.api import SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.families import family_of
from engine.model_source import DUMMY_PRESETS, ModelBundle, load_model

NEW_TOKENS = 64
MODES = {"float32": "none", "int8": "int8"}
# Published shapes of each family (engine/model_source/dummy.py), for the memory table.
MEMORY_PRESETS = [
    "smollm2-135m", "llama-3-8b", "mistral-7b", "qwen2.5-0.5b", "qwen3-0.6b", "gemma3-270m",
    "mixtral-8x7b", "qwen3-30b-a3b", "olmoe-1b-7b",
]  # fmt: skip


def prompts(bundle: ModelBundle) -> list[list[int]]:
    tok = bundle.tokenizer
    return [
        tok.encode(f"Here is a clear explanation of {t} for a curious student:") for t in TOPICS
    ]


def timed(fn: Callable[[], int]) -> float:
    """Output tokens per second of one call returning its token count."""
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def bench_tessera(bundle: ModelBundle, quantization: str, batch: list[list[int]]) -> dict:
    engine = LLMEngine(
        EngineConfig(
            model={"max_model_len": 1024},
            cache={"kv_cache_memory": "1GiB", "enable_prefix_caching": False},
            backend={"name": "torch", "quantization": quantization},
        ),
        bundle=bundle,
    )
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    engine.generate(batch[:2], SamplingParams(max_tokens=4, temperature=0.0))  # warm

    def run(ps: list[list[int]]) -> int:
        return sum(len(r.completions[0].token_ids) for r in engine.generate(ps, greedy))

    return {"batch32": timed(lambda: run(batch)), "single": timed(lambda: run(batch[:1]))}


def hf_model(bundle: ModelBundle, folder: Path) -> Any:
    """transformers' model of the family over the bundle's own weights."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    family = family_of(bundle.config.model_type)
    (folder / "config.json").write_text(json.dumps(bundle.config.to_hf_dict()))
    weights = {family.checkpoint_name(n): w for n, w in bundle.weights.items()}
    save_file(weights, str(folder / "model.safetensors"))
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def bench_hf(model: Any, batch: list[list[int]]) -> dict:
    pad = 0

    def generate(ps: list[list[int]]) -> int:
        width = max(map(len, ps))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in ps])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad,
            )  # fmt: skip
        return int((out.shape[1] - width) * len(ps))

    generate(batch[:2])  # warm
    return {"batch32": timed(lambda: generate(batch)), "single": timed(lambda: generate(batch[:1]))}


def memory_rows() -> list[str]:
    rows = [
        "| model (published shape) | family | layers (sliding) | KV heads x dim | "
        "KV per token, float32 | bfloat16 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in MEMORY_PRESETS:
        c = DUMMY_PRESETS[name]
        sliding = sum(c.window(i) is not None for i in range(c.num_hidden_layers))
        rows.append(
            f"| {name} | {c.model_type} | {c.num_hidden_layers} ({sliding}) | "
            f"{c.num_key_value_heads} x {c.head_dim} | "
            f"{c.kv_bytes_per_token(4) / 1024:.0f} KiB | {c.kv_bytes_per_token(2) / 1024:.0f} KiB |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model spec (repeat)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = [
        f"# Model families against transformers, {datetime.date.today()}",
        "",
        f"Command: `{' '.join(sys.argv)}`  ",
        f"Machine: {describe()}; torch {torch.__version__}",
        "",
        f"Workload: {len(TOPICS)} distinct prompts (~12 tokens) decoded together, and one alone; "
        f"{NEW_TOKENS} greedy tokens each, EOS ignored; one run, output tokens/s. "
        "transformers: float32, batched generate with left padding, on the same weights.",
        "",
        "| model | params (active) | system | 32 prompts tok/s | single stream tok/s | "
        "vs transformers (32 / single) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in args.model:
        bundle = load_model(spec)
        batch = prompts(bundle)
        c = bundle.config
        size = f"{c.num_parameters / 1e6:.0f}M ({c.num_active_parameters / 1e6:.0f}M)"
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            model = hf_model(bundle, Path(tmp))
            results["transformers"] = bench_hf(model, batch)
            del model
        for mode, quantization in MODES.items():
            results[f"tessera torch {mode}"] = bench_tessera(bundle, quantization, batch)
        ref = results["transformers"]
        for system, r in results.items():
            ratio = f"{r['batch32'] / ref['batch32']:.2f}x / {r['single'] / ref['single']:.2f}x"
            lines.append(
                f"| {bundle.name} | {size} | {system} | {r['batch32']:.1f} | {r['single']:.1f} | "
                f"{ratio} |"
            )
            print(lines[-1], flush=True)
    lines += ["", "## KV cache memory per token", "", *memory_rows(), ""]
    lines.append(
        "Sliding layers keep every token's K/V today (their blocks are not freed once they "
        "leave the window), so a sliding layer costs what a full one does."
    )
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
