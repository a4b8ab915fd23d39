"""`tessera prepare`: the one-time work of a first `tessera serve`, done ahead and cached.

Converting the GGUF, compiling the native kernels, gating and timing the backend candidates
and compiling the RAG embedder take minutes on a CPU the first time and seconds afterwards
(everything lands in the model cache and torch's extension cache). `make serve` runs this
once after installing, so the server it then starts is ready in seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

from tessera.cli_args import add_settings_flags, parse_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tessera.commands.serve import ServeConfig

    p = sub.add_parser(
        "prepare",
        help="do the one-time work of `tessera serve` now (model conversion, kernels, backend "
        "choice, RAG embedder) and exit",
        description="Convert and cache the model, build the kernels, measure the backends and "
        "compile the RAG embedder, as `tessera serve` with the same flags would on its first "
        "start; later starts find all of it cached.",
    )
    add_settings_flags(p, ServeConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.llm_engine import LLMEngine
    from engine.model_source import ModelSourceError
    from tessera.commands.serve import ServeConfig

    config = parse_settings("prepare", ServeConfig, args)
    if config is None:
        return 2
    from tessera.preflight import preflight

    problem = preflight("prepare", config.http.host, [], config.model.cache_dir)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        engine = LLMEngine(config.engine_config())
        if config.rag.enabled:
            from services.rag.config import RagConfig
            from services.rag.embedder import build_embedder

            build_embedder(RagConfig().embedder)
    except (ModelSourceError, OSError, RuntimeError, ValueError) as e:
        print(f"tessera prepare: error: {e}", file=sys.stderr)
        return 2
    cap = engine.capacity
    print(
        f"tessera prepare: ready in {time.perf_counter() - t0:.0f} s; `tessera serve` will run "
        f"{cap.backend} {cap.quantization} ({cap.backend_reason})"
    )
    return 0
