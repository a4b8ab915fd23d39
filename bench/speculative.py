"""Speculative decoding (off, ngram, suffix) on three workloads at 1, 4, 8, 16 and 32 concurrent
requests, in one run, on the default model and backend choice of this machine.

Workloads (greedy, NEW_TOKENS tokens at most, EOS honoured):
- rag: a retrieved passage and a question whose answer quotes it;
- code-edit: return a given function with a docstring added;
- code-rename: return a longer function with one variable renamed;
- chat: plain questions (the workload speculation must not slow down).
A model with a chat template gets each as a user turn; a base model (--model gemma3-270m)
gets the same task as a text to continue, with stop strings where its answer ends
(BASE_MODEL_STOP), as a user of a base model would set them.
Each method runs in its own engine with speculation on at every batch size unless
--disable-by-batch-size says otherwise (the engine's own default is 1), so the table shows
where it stops paying; the greedy outputs of every method are checked identical to off.

    .venv/bin/python bench/speculative.py --out bench/results/speculative-DATE.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, write_report
from bench.serving_load import TOPICS
from engine.api import SamplingParams
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_source import Tokenizer, load_model

NEW_TOKENS = 128
CONCURRENCY = (1, 4, 8, 16, 32)
METHODS = ("off", "ngram", "suffix")

FACTS = [
    ("the Eiffel Tower", "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. "
     "It is 330 metres tall and was the tallest man-made structure in the world for 41 years."),
    ("the Great Wall", "The Great Wall of China stretches over 21,000 kilometres. Most of the "
     "wall that stands today was built during the Ming dynasty, between 1368 and 1644."),
    ("photosynthesis", "Photosynthesis converts light energy into chemical energy. Plants take "
     "in carbon dioxide and water and, using sunlight, produce glucose and release oxygen."),
    ("the Moon landing", "Apollo 11 landed on the Moon on 20 July 1969. Neil Armstrong and Buzz "
     "Aldrin walked on the surface while Michael Collins orbited above in the command module."),
]  # fmt: skip
FUNCTIONS = [
    "def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n"
    "        subtotal += item.price * item.quantity\n    tax = subtotal * tax_rate\n"
    "    return subtotal + tax\n",
    "def find_user(users, name):\n    for user in users:\n        if user.name == name:\n"
    "            return user\n    return None\n",
    "def average(values):\n    if not values:\n        return 0\n    total = sum(values)\n"
    "    return total / len(values)\n",
    "def word_counts(text):\n    counts = {}\n    for word in text.split():\n"
    "        counts[word] = counts.get(word, 0) + 1\n    return counts\n",
]


# Longer functions for a rename: the answer is the function again with one identifier changed.
RENAMES = [
    ("result", "output",
     "def merge_sorted(left, right):\n    result = []\n    i = 0\n    j = 0\n"
     "    while i < len(left) and j < len(right):\n        if left[i] <= right[j]:\n"
     "            result.append(left[i])\n            i += 1\n        else:\n"
     "            result.append(right[j])\n            j += 1\n    result.extend(left[i:])\n"
     "    result.extend(right[j:])\n    return result\n"),
    ("count", "tally",
     "def summarize(orders):\n    count = 0\n    revenue = 0.0\n    largest = None\n"
     "    for order in orders:\n        count += 1\n        revenue += order.total\n"
     "        if largest is None or order.total > largest.total:\n            largest = order\n"
     "    average = revenue / count if count else 0.0\n"
     "    return {\"count\": count, \"revenue\": revenue, \"average\": average,\n"
     "            \"largest\": largest}\n"),
    ("lines", "rows",
     "def read_config(path):\n    settings = {}\n    with open(path) as handle:\n"
     "        lines = handle.readlines()\n    for line in lines:\n        line = line.strip()\n"
     "        if not line or line.startswith(\"#\"):\n            continue\n"
     "        key, value = line.split(\"=\", 1)\n        settings[key.strip()] = value.strip()\n"
     "    return settings\n"),
    ("queue", "frontier",
     "def shortest_path(graph, start, goal):\n    queue = [(start, [start])]\n    seen = {start}\n"
     "    while queue:\n        node, path = queue.pop(0)\n        if node == goal:\n"
     "            return path\n        for neighbour in graph.get(node, []):\n"
     "            if neighbour not in seen:\n                seen.add(neighbour)\n"
     "                queue.append((neighbour, path + [neighbour]))\n    return None\n"),
]  # fmt: skip


# Where a base model's answer ends: a quote or a chat answer at the end of its line, code at
# the first blank line (none of the functions has one).
BASE_MODEL_STOP = {"rag": ["\n"], "code-edit": ["\n\n"], "code-rename": ["\n\n"], "chat": ["\n"]}


def chat(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]))


def workloads(tok: Tokenizer) -> dict[str, list[list[int]]]:
    """Each workload's prompts: user turns for a chat model, texts to continue for a base
    model (one without a chat template)."""
    if tok.chat_template is None:
        return _completion_workloads(tok)
    rag = [
        chat(tok, f"Context:\n{fact}\n\nQuestion: what does the context say about {name}? "
             "Answer by quoting the context word for word.")
        for name, fact in FACTS
    ]  # fmt: skip
    edit = [
        chat(tok, f"Here is a Python function:\n\n{fn}\nReturn the whole function unchanged "
             f"except that it gets a docstring. Variant {i}.")
        for i, fn in enumerate(FUNCTIONS)
    ]  # fmt: skip
    rename = [
        chat(tok, f"Here is a Python function:\n\n{fn}\nReturn this function with one "
             f"change: rename the variable `{old}` to `{new}`.")
        for old, new, fn in RENAMES
    ]  # fmt: skip
    plain = [chat(tok, f"Tell me about {t} in a few sentences.") for t in TOPICS]
    return {"rag": rag, "code-edit": edit, "code-rename": rename, "chat": plain}


def _completion_workloads(tok: Tokenizer) -> dict[str, list[list[int]]]:
    """The same tasks as texts for a base model to continue."""
    rag = [
        tok.encode(f"Context: {fact}\n\nQuestion: What does the context say about {name}?\n"
                   "Answer (quoting the context):\n")
        for name, fact in FACTS
    ]  # fmt: skip
    edit = [
        tok.encode(f"Original code:\n\n{fn}\nThe same function with a one-line docstring "
                   "added:\n\n")
        for fn in FUNCTIONS
    ]  # fmt: skip
    rename = [
        tok.encode(f"Original code:\n\n{fn}\nThe same code with the variable `{old}` "
                   f"renamed to `{new}`:\n\n")
        for old, new, fn in RENAMES
    ]  # fmt: skip
    plain = [
        tok.encode(f"Question: Tell me about {t} in a few sentences.\nAnswer:") for t in TOPICS
    ]
    return {"rag": rag, "code-edit": edit, "code-rename": rename, "chat": plain}


def stop_strings(tok: Tokenizer) -> dict[str, list[str]]:
    """The stop strings each workload's requests carry: none for a chat model (its answer
    ends with EOS), BASE_MODEL_STOP's for a base model."""
    if tok.chat_template is not None:
        return {name: [] for name in BASE_MODEL_STOP}
    return {name: list(stop) for name, stop in BASE_MODEL_STOP.items()}


def prompts_for(pool: list[list[int]], n: int) -> list[list[int]]:
    """n prompts cycling over the pool (distinct pools repeat for 32 concurrent requests)."""
    return [pool[i % len(pool)] for i in range(n)]


def run(
    engine: LLMEngine, prompts: list[list[int]], stop: list[str]
) -> tuple[float, list[list[int]]]:
    engine.kv.reset_prefix_cache()
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, stop=stop)
    t0 = time.perf_counter()
    results = engine.generate(prompts, greedy)
    seconds = time.perf_counter() - t0
    outputs = [r.completions[0].token_ids for r in results]
    return sum(map(len, outputs)) / seconds, outputs


# ---- llama.cpp's llama-server, the same prompt token ids through its /completion API ----------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def bench_llama_server(
    binary: Path,
    gguf: Path,
    loads: dict[str, list[list[int]]],
    stop: dict[str, list[str]],
    extra: list[str],
) -> dict[tuple[str, int], float]:
    """Output tokens/s of llama-server (-np 32 -cb) on every workload and concurrency."""
    port = _free_port()
    slots = max(CONCURRENCY)
    cmd = [str(binary), "-m", str(gguf), "-np", str(slots), "-cb", "-c", str(slots * 2048),
           "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"llama-server exited with {proc.returncode}: {' '.join(cmd)}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        speed = {}

        def one(prompt: list[int], stops: list[str]) -> int:
            body = {"prompt": prompt, "n_predict": NEW_TOKENS, "temperature": 0.0,
                    "cache_prompt": False, "stop": stops}  # fmt: skip
            return int(_post(f"{base}/completion", body)["tokens_predicted"])

        one(loads["chat"][0], [])  # warm
        for name, pool in loads.items():
            for c in CONCURRENCY:
                prompts = prompts_for(pool, c)
                t0 = time.perf_counter()
                with ThreadPoolExecutor(c) as ex:
                    n = sum(ex.map(one, prompts, [stop[name]] * c))
                speed[name, c] = n / (time.perf_counter() - t0)
                print(f"llama-server {name} c={c}: {speed[name, c]:.1f} tok/s", flush=True)
        return speed
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="model spec (default: the bundled model)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--workload", action="append", help="only these workloads (repeat)")
    parser.add_argument(
        "--disable-by-batch-size", type=int, default=0,
        help="--speculative-disable-by-batch-size for the speculating engines (0: always on)",
    )  # fmt: skip
    parser.add_argument("--llama-server", type=Path, help="llama-server binary (bench/.venv-peers)")
    parser.add_argument(
        "--llama-spec-args", default="", help="llama-server flags of its own speculation"
    )
    parser.add_argument(
        "--llama-args", default="",
        help="llama-server flags for every run (--no-repack where its repacking crashes)",
    )  # fmt: skip
    args = parser.parse_args()
    bundle = load_model(args.model or None)
    loads = workloads(bundle.tokenizer)
    stop = stop_strings(bundle.tokenizer)
    if args.workload:
        loads = {name: pool for name, pool in loads.items() if name in args.workload}
    speed: dict[tuple[str, str, int], float] = {}
    accept: dict[tuple[str, str], tuple[float, float]] = {}
    outputs: dict[tuple[str, str, int], list[list[int]]] = {}
    backend = ""
    for method in METHODS:
        engine = LLMEngine(
            EngineConfig(
                model={"path": args.model, "max_model_len": 2048},
                cache={"kv_cache_memory": "2GiB"},
                speculative={
                    "method": method,
                    "disable_by_batch_size": args.disable_by_batch_size,
                },
            ),
            bundle=bundle,
        )
        backend = f"{engine.capacity.backend} {engine.capacity.quantization}"
        run(engine, next(iter(loads.values()))[:2], [])  # warm
        for name, pool in loads.items():
            before = engine.stats().spec
            drafts0, tokens0, acc0 = (
                (before.drafts, before.draft_tokens, before.accepted_tokens)
                if before
                else (0, 0, 0)
            )
            for c in CONCURRENCY:
                speed[name, method, c], outputs[name, method, c] = run(
                    engine, prompts_for(pool, c), stop[name]
                )
                print(f"{name} {method} c={c}: {speed[name, method, c]:.1f} tok/s", flush=True)
            after = engine.stats().spec
            if after:
                drafts, tokens = after.drafts - drafts0, after.draft_tokens - tokens0
                accepted = after.accepted_tokens - acc0
                accept[name, method] = (
                    accepted / tokens if tokens else 0.0,
                    1 + accepted / drafts if drafts else 0.0,
                )
        del engine
    peers: dict[str, dict[tuple[str, int], float]] = {}
    if args.llama_server:
        gguf = Path(bundle.source)
        common = args.llama_args.split()
        peers["llama-server"] = bench_llama_server(args.llama_server, gguf, loads, stop, common)
        if args.llama_spec_args:
            extra = [*common, *args.llama_spec_args.split()]
            peers["llama-server " + args.llama_spec_args] = bench_llama_server(
                args.llama_server, gguf, loads, stop, extra
            )
    lines = [
        f"# Speculative decoding, {datetime.date.today()}",
        "",
        f"Command: `{' '.join(sys.argv)}`  ",
        f"Machine: {describe()}; torch {torch.__version__}; model {bundle.name}, {backend}",
        "",
        f"Greedy, up to {NEW_TOKENS} new tokens, EOS honoured, stop strings {stop}; "
        "output tokens/s of the whole "
        "batch, in-process engine (LLMEngine.generate), speculation off above "
        f"{args.disable_by_batch_size} running sequences (0: never off); one run. Ratios "
        "against off at the same concurrency.",
        "",
        "| workload | concurrency | off tok/s | ngram tok/s | suffix tok/s | ngram / off | "
        "suffix / off | outputs identical |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in loads:
        for c in CONCURRENCY:
            off = speed[name, "off", c]
            same = all(outputs[name, m, c] == outputs[name, "off", c] for m in METHODS)
            lines.append(
                f"| {name} | {c} | {off:.1f} | {speed[name, 'ngram', c]:.1f} | "
                f"{speed[name, 'suffix', c]:.1f} | {speed[name, 'ngram', c] / off:.2f}x | "
                f"{speed[name, 'suffix', c] / off:.2f}x | {'yes' if same else 'NO'} |"
            )
    if peers:
        lines += [
            "",
            f"llama.cpp's llama-server (-np 32 -cb {args.llama_args}".rstrip()
            + ") on the same GGUF and prompt token ids, through "
            "its /completion API (greedy, same token limit, prompt cache off), against Tessera's "
            "best method in-process:",
            "",
            "| workload | concurrency | "
            + " | ".join(f"{p} tok/s" for p in peers)
            + " | Tessera best tok/s | Tessera best / "
            + next(iter(peers))
            + " |",
            "| --- | --- | " + "--- | " * len(peers) + "--- | --- |",
        ]
        for name in loads:
            for c in CONCURRENCY:
                best = max(speed[name, m, c] for m in METHODS)
                cells = " | ".join(f"{peers[p][name, c]:.1f}" for p in peers)
                first = peers[next(iter(peers))][name, c]
                lines.append(f"| {name} | {c} | {cells} | {best:.1f} | {best / first:.2f}x |")
    lines += [
        "",
        "| workload | method | acceptance rate | mean acceptance length |",
        "| --- | --- | --- | --- |",
    ]
    for (name, method), (rate, length) in accept.items():
        lines.append(f"| {name} | {method} | {rate:.1%} | {length:.2f} |")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
