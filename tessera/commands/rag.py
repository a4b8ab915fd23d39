"""`tessera rag`: the RAG sidecar (HTTP on 8002: /v1/embeddings, /v1/collections, /metrics)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.rag.config import RagConfig
from tessera.cli_args import add_settings_flags, parse_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rag",
        help="run the RAG sidecar (embeddings, FAISS collections, retrieval)",
        description="Serve collections and embeddings over HTTP; drain on SIGTERM.",
    )
    add_settings_flags(p, RagConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from services.rag.errors import RagError  # the model stack loads only here
    from services.rag.server import RagServer
    from services.rag.storage import StorageError

    config = parse_settings("rag", RagConfig, args)
    if config is None:
        return 2
    try:
        return asyncio.run(RagServer(config).serve_forever())
    except (RagError, StorageError, OSError) as e:
        print(f"tessera rag: error: {e}", file=sys.stderr)
        return 2
