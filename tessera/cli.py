"""The `tessera` command: one subcommand per service, flags generated from settings."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tessera.commands import engine, gateway, generate, keys, rag, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Tessera model serving: OpenAI-compatible gateway, INT8 engine pods, RAG.",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(sub)
    engine.register(sub)
    gateway.register(sub)
    rag.register(sub)
    generate.register(sub)
    keys.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
