"""`tessera bench serve`: the serving benchmark (bench/serving.py) from the command line.

The harness lives in the source checkout's bench/ folder, beside this package, not in the
installed package: the command works from a checkout (`make setup` installs it editable).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _serving() -> ModuleType | None:
    """bench.serving from the checkout, or None when this install has no bench/ folder."""
    if not (REPO / "bench" / "serving.py").is_file():
        return None
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import bench.serving

    return bench.serving


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmarks (serve: the serving benchmark)")
    kinds = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    serve = kinds.add_parser(
        "serve",
        help="Tessera and peer servers under the same streaming load, through the OpenAI API",
        description="Start each server, sweep concurrency (or Poisson rates), measure "
        "throughput, TTFT, inter-token latency, goodput; write JSON and a plot.",
    )
    serving = _serving()
    if serving is not None:
        serving.add_flags(serve)
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    serving = _serving()
    if serving is None:
        missing = REPO / "bench"
        print(f"tessera bench: needs a source checkout ({missing} is missing)", file=sys.stderr)
        return 2
    command = shlex.join(["tessera", *sys.argv[1:]])
    return int(serving.run_cli(args, command))
