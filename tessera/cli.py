"""The `tessera` command: one subcommand per service, flags generated from settings."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from tessera.log_format import LOG_FORMATS, configure_logging
from tessera.tracing import configure_tracing

COMMANDS = {
    "serve": "run the embedded stack: OpenAI-compatible gateway + in-process engine",
    "prepare": "do the one-time work of `tessera serve` now",
    "engine": "run one engine pod (gRPC + metrics)",
    "gateway": "run the API gateway in front of engine pods",
    "rag": "run the RAG sidecar (embeddings, FAISS collections, retrieval)",
    "generate": "generate from prompts given as arguments or in a file",
    "keys": "make API keys for the gateway's --keys-file",
    "bench": "benchmarks (serve: the serving benchmark)",
}
"""Each subcommand and its one-line help; its module is tessera.commands.<name>."""


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv (the first word that is one), if any."""
    return next((a for a in argv if a in COMMANDS), None)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, the other subcommands are listed but their
    modules are not imported (a gateway process never loads the engine's settings)."""
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
    for name, summary in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"tessera.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_chosen(argv))
    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:
        parser.error(f"--log-format: choose from {', '.join(LOG_FORMATS)}, not {args.log_format!r}")
    configure_logging(args.log_level, args.log_format, service=args.command)
    configure_tracing(args.command)  # only with the otel extra and an OTLP endpoint
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
