"""xgrammar against llguidance on this model's tokenizer: set-up, compiling a JSON schema,
and filling one token mask per step along a valid document (what a constrained decode step
pays per row). Why Tessera uses xgrammar is recorded from this run.

    python bench/grammar_engines.py --out bench/results/grammar-engines-DATE.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_info, write_report
from bench.structured_outputs import SCHEMA
from engine.model_source.cache import default_cache_dir
from engine.model_source.loader import default_tokenizer

DOCUMENT = (
    '{"city": "Paris", "country": "France", "population": 2102650, '
    '"landmarks": ["Eiffel Tower", "Louvre"]}'
)


def _xgrammar(hf: Any, vocab: int, eos: list[int], ids: list[int]) -> dict[str, float]:
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab, stop_token_ids=eos)
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
    compile_s = time.perf_counter() - t0
    matcher, mask = xgr.GrammarMatcher(grammar), xgr.allocate_token_bitmask(1, vocab)
    fills = []
    for t in ids:
        t0 = time.perf_counter()
        matcher.fill_next_token_bitmask(mask, 0)
        fills.append(time.perf_counter() - t0)
        assert matcher.accept_token(t)
    return {"setup": setup, "compile": compile_s, "fill": statistics.median(fills)}


def _llguidance(hf: Any, vocab: int, ids: list[int]) -> dict[str, float]:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    t0 = time.perf_counter()
    tokenizer = llguidance.hf.from_tokenizer(hf, n_vocab=vocab)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(SCHEMA),
        defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
    )
    matcher = llguidance.LLMatcher(tokenizer, grammar)
    compile_s = time.perf_counter() - t0
    mask = llguidance.torch.allocate_token_bitmask(1, vocab)
    fills = []
    for t in ids:
        t0 = time.perf_counter()
        llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)
        fills.append(time.perf_counter() - t0)
        assert matcher.consume_token(t), matcher.get_error()
    return {"setup": setup, "compile": compile_s, "fill": statistics.median(fills)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from transformers import PreTrainedTokenizerFast

    tok = default_tokenizer(default_cache_dir())
    hf = PreTrainedTokenizerFast(tokenizer_object=tok.backend)
    vocab = 49152
    ids = tok.encode(DOCUMENT, add_special_tokens=False)
    rows = {
        "xgrammar": _xgrammar(hf, vocab, tok.eos_token_ids, ids),
        "llguidance": _llguidance(hf, vocab, ids),
    }
    m = machine_info()
    lines = [
        "# Grammar engines on SmolLM2's tokenizer",
        "",
        f"Command: `python bench/grammar_engines.py {' '.join(sys.argv[1:])}`",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores. Schema of "
        f"bench/structured_outputs.py; {len(ids)} tokens of a valid document, median mask "
        "fill per token.",
        "",
        "| engine | tokenizer set-up (ms) | schema compile (ms) | mask fill per token (µs) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {k} | {v['setup'] * 1e3:.1f} | {v['compile'] * 1e3:.2f} | {v['fill'] * 1e6:.1f} |"
            for k, v in rows.items()
        ),
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
