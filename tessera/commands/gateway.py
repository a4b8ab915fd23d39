"""`tessera gateway`: the gateway alone, engines given by --engines or --dns."""

from __future__ import annotations

import argparse
import asyncio
import sys

from tessera.cli_args import add_settings_flags, parse_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway.config import GatewayConfig

    p = sub.add_parser(
        "gateway",
        help="run the API gateway in front of engine pods",
        description="OpenAI-compatible REST (:8000) and public gRPC (:50051) over engine pods.",
    )
    add_settings_flags(p, GatewayConfig)
    p.set_defaults(run=run)


def _banner(server: object) -> str:
    s = server  # GatewayServer
    h = s.config.http  # type: ignore[attr-defined]
    engines = len(s.gateway.pool.endpoints)  # type: ignore[attr-defined]
    return (
        f"gateway at http://{h.host}:{s.port}/v1 (gRPC :{s.grpc_port}), "  # type: ignore[attr-defined]
        f"{engines} engine(s) known"
    )


async def _serve(config: object) -> int:
    from gateway.core import Gateway
    from gateway.server import GatewayServer

    server = GatewayServer(Gateway(config))  # type: ignore[arg-type]
    return await server.serve_forever(_banner)


def run(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig

    config = parse_settings("gateway", GatewayConfig, args)
    if config is None:
        return 2
    if not config.routing.engines and not config.routing.dns:
        print(
            "tessera gateway: error: give engines with --engines HOST:PORT or --dns HOST:PORT",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(_serve(config))
    except OSError as e:
        print(f"tessera gateway: error: {e}", file=sys.stderr)
        return 2
