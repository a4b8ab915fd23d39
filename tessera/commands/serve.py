"""`tessera serve`: the embedded stack (gateway + in-process engine + RAG) on 127.0.0.1:8000.

Its settings are the engine's plus the gateway's parts; tessera.embedded composes the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pydantic import Field

from engine.config import EngineConfig
from gateway.config import GatewayConfig, HTTPConfig
from gateway.settings_parts import (
    AuthConfig,
    EmbeddedRagConfig,
    RateLimitConfig,
    RedisConfig,
    ResponseCacheConfig,
    SemanticCacheConfig,
)
from tessera.cli_args import add_settings_flags, parse_settings
from tessera.commands import start_up_errors


class ServeConfig(EngineConfig):
    """Root of `tessera serve`: the embedded stack, an in-process engine behind the gateway."""

    http: HTTPConfig = Field(default_factory=lambda: HTTPConfig())
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())
    limits: RateLimitConfig = Field(default_factory=lambda: RateLimitConfig())
    response_cache: ResponseCacheConfig = Field(default_factory=lambda: ResponseCacheConfig())
    semantic_cache: SemanticCacheConfig = Field(default_factory=lambda: SemanticCacheConfig())
    redis: RedisConfig = Field(default_factory=lambda: RedisConfig())

    rag: EmbeddedRagConfig = Field(default_factory=lambda: EmbeddedRagConfig())

    def gateway_config(self) -> GatewayConfig:
        """The gateway part (no remote engines or sidecar: they run in this process)."""
        return GatewayConfig(
            http=self.http,
            auth=self.auth,
            limits=self.limits,
            response_cache=self.response_cache,
            semantic_cache=self.semantic_cache,
            redis=self.redis,
        )

    def engine_config(self) -> EngineConfig:
        # Every engine group, by name: a list written out here once dropped --speculative.
        return EngineConfig(**{name: getattr(self, name) for name in EngineConfig.model_fields})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the embedded stack: OpenAI-compatible gateway + in-process engine",
        description="Load the model and serve the OpenAI-compatible REST API (and gRPC).",
    )
    add_settings_flags(p, ServeConfig)
    p.set_defaults(run=run)


async def _serve(config: ServeConfig) -> int:
    from tessera.embedded import banner, build_embedded

    server = await build_embedded(config)
    return await server.serve_forever(banner)


def run(args: argparse.Namespace) -> int:
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
    except start_up_errors() as e:
        print(f"tessera serve: error: {e}", file=sys.stderr)
        return 2
