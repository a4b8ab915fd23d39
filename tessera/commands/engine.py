"""`tessera engine`: one engine pod (gRPC on 50061, /metrics /health /ready on 8001)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from engine.config import EnginePodConfig
from tessera.cli_args import add_settings_flags, parse_settings
from tessera.commands import start_up_errors


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "engine",
        help="run one engine pod (gRPC + metrics)",
        description="Load the model behind the tessera.engine.v1 gRPC service; drain on SIGTERM.",
    )
    add_settings_flags(p, EnginePodConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.service.server import EnginePod  # grpc and the model stack load only here

    config = parse_settings("engine", EnginePodConfig, args)
    if config is None:
        return 2
    from tessera.preflight import preflight

    ports = [("--port", config.server.port), ("--metrics-port", config.server.metrics_port)]
    problem = preflight("engine", config.server.host, ports, config.model.cache_dir)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    try:
        return asyncio.run(EnginePod(config).serve_forever())
    except start_up_errors() as e:
        print(f"tessera engine: error: {e}", file=sys.stderr)
        return 2
