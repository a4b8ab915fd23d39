"""`tessera serve`: the embedded stack (gateway + in-process engine) on 127.0.0.1:8000."""

from __future__ import annotations

import argparse
import asyncio
import sys

from tessera.cli_args import add_settings_flags, parse_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway.config import ServeConfig

    p = sub.add_parser(
        "serve",
        help="run the embedded stack: OpenAI-compatible gateway + in-process engine",
        description="Load the model and serve the OpenAI-compatible REST API (and gRPC).",
    )
    add_settings_flags(p, ServeConfig)
    p.set_defaults(run=run)


async def _serve(config: object) -> int:
    from gateway.embedded import banner, build_embedded

    server = await build_embedded(config)  # type: ignore[arg-type]
    return await server.serve_forever(banner)


def run(args: argparse.Namespace) -> int:
    from engine.model_source import ModelSourceError
    from gateway.config import ServeConfig

    config = parse_settings("serve", ServeConfig, args)
    if config is None:
        return 2
    from tessera.preflight import preflight

    ports = [("--port", config.http.port), ("--grpc-port", config.http.grpc_port)]
    if config.rag.enabled:
        ports.append(("--rag-port", config.rag.port))
    problem = preflight("serve", config.http.host, ports, config.model.cache_dir)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config))
    except (ModelSourceError, OSError) as e:
        print(f"tessera serve: error: {e}", file=sys.stderr)
        return 2
