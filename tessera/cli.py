"""The `tessera` command: one subcommand per service, flags generated from settings."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tessera.commands import bench, engine, gateway, generate, keys, prepare, rag, serve
from tessera.log_format import LOG_FORMATS, configure_logging
from tessera.tracing import configure_tracing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Tessera model serving: OpenAI-compatible gateway, INT8 engine pods, RAG.",
    )
    # The environment gives the defaults so an image or a chart can set them once for
    # every command (TESSERA_LOG_FORMAT=json in the container images).
    parser.add_argument(
        "--log-level",
        default=os.environ.get("TESSERA_LOG_LEVEL", "INFO"),
        help="logging level of Tessera's own loggers; other libraries' records show from "
        "WARNING up, unless DEBUG (default $TESSERA_LOG_LEVEL, else INFO)",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("TESSERA_LOG_FORMAT", "text"),
        choices=LOG_FORMATS,
        help="text, or json: one object per line with request_id and other fields "
        "(default $TESSERA_LOG_FORMAT, else text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(sub)
    prepare.register(sub)
    engine.register(sub)
    gateway.register(sub)
    rag.register(sub)
    generate.register(sub)
    keys.register(sub)
    bench.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:
        parser.error(f"--log-format: choose from {', '.join(LOG_FORMATS)}, not {args.log_format!r}")
    configure_logging(args.log_level, args.log_format, service=args.command)
    configure_tracing(args.command)  # only with the otel extra and an OTLP endpoint
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
