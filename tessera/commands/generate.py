"""`tessera generate`: run prompts through the engine from the command line, no server."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.api import InvalidRequestError, SamplingParams, SamplingParamsError
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from tessera.cli_args import (
    add_dataclass_flags,
    add_settings_flags,
    dataclass_overrides,
    flag_for,
    settings_overrides,
)
from tessera.commands import start_up_errors


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "generate",
        help="generate from prompts given as arguments or in a file",
        description="Load the model, run the prompts together through the engine, print them.",
    )
    p.add_argument("prompts", nargs="*", help="prompts (chat user messages unless --raw)")
    p.add_argument("--file", type=Path, help="one prompt per line, or JSONL with prompt/messages")
    p.add_argument(
        "--raw", action="store_true", help="send prompts as plain text, no chat template"
    )
    p.add_argument("--system", help="system message for chat prompts")
    p.add_argument("--json", action="store_true", help="print one JSON object per result")
    add_settings_flags(p, EngineConfig)
    add_dataclass_flags(p, SamplingParams, "sampling", skip=("skip_special_tokens",))
    p.set_defaults(run=run, **{"sampling:max_tokens": 128, "sampling:temperature": 0.0})


def _read_prompts(args: argparse.Namespace) -> list[Any]:
    prompts: list[Any] = list(args.prompts)
    if args.file:
        for line in args.file.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            if args.file.suffix == ".jsonl":
                obj = json.loads(line)
                prompts.append(obj.get("messages") or obj["prompt"])
            else:
                prompts.append(line)
    return prompts


def _to_prompt(engine: LLMEngine, item: Any, args: argparse.Namespace) -> str:
    if isinstance(item, list):  # chat messages from JSONL
        return engine.tokenizer.apply_chat_template(item)
    if args.raw:
        return str(item)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": item}
    ]
    return engine.tokenizer.apply_chat_template(messages)


def run(args: argparse.Namespace) -> int:
    errors: tuple[type[Exception], ...] = (
        *start_up_errors(),
        InvalidRequestError,
        SamplingParamsError,
    )
    try:
        prompts = _read_prompts(args)
        if not prompts:
            raise InvalidRequestError("no prompts: pass them as arguments or with --file")
        params = SamplingParams(**dataclass_overrides(args, "sampling"))
        config = EngineConfig(**settings_overrides(args))
        engine = LLMEngine(config)
        print(f"[tessera] {engine.capacity.summary()}", file=sys.stderr)
        print(f"[tessera] {engine.speculation_summary()}", file=sys.stderr)
        texts = [_to_prompt(engine, p, args) for p in prompts]
        t0 = time.perf_counter()
        results = engine.generate(texts, params)
        elapsed = time.perf_counter() - t0
    except errors as e:
        print(f"tessera generate: error: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:
        detail = e.errors()[0]
        flag = flag_for(EngineConfig, tuple(detail["loc"]))
        print(f"tessera generate: error: {flag}: {detail['msg']}", file=sys.stderr)
        return 2
    except (ValueError, json.JSONDecodeError, KeyError) as e:
        line = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"tessera generate: error: {line}", file=sys.stderr)
        return 2
    out_tokens = 0
    for prompt, res in zip(prompts, results, strict=True):
        for c in res.completions:
            out_tokens += len(c.token_ids)
            if args.json:
                print(
                    json.dumps(
                        {
                            "prompt": prompt,
                            "index": c.index,
                            "text": c.text,
                            "finish_reason": c.finish_reason.value if c.finish_reason else None,
                            "prompt_tokens": len(res.prompt_token_ids),
                            "completion_tokens": len(c.token_ids),
                            "ttft_s": res.timings.first_token,
                        },
                        ensure_ascii=False,
                    )
                )
            else:
                print(f">>> {prompt}\n{c.text}\n")
    print(
        f"[tessera] {len(results)} prompts, {out_tokens} tokens in {elapsed:.2f}s "
        f"({out_tokens / max(elapsed, 1e-9):.1f} tok/s)",
        file=sys.stderr,
    )
    return 0
