"""Shared set-up for gateway tests: an embedded gateway over a tiny random-weight engine."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle
from gateway.server import GatewayServer
from tessera.commands.serve import ServeConfig
from tessera.embedded import build_embedded

ENGINE_SETTINGS: dict[str, Any] = {
    "model": {"max_model_len": 512},
    "cache": {"kv_cache_memory": "64MiB", "block_size": 4},
    "scheduler": {"max_num_batched_tokens": 64},
}
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def serve_config(**groups: dict[str, Any]) -> ServeConfig:
    http = {"host": "127.0.0.1", "port": 0, "grpc_port": 0, **groups.pop("http", {})}
    redis = groups.pop("redis", {"url": None})
    groups.setdefault("rag", {"enabled": False})  # tests that need RAG turn it on
    return ServeConfig(**ENGINE_SETTINGS, http=http, redis=redis, **groups)


@asynccontextmanager
async def running_gateway(
    bundle: ModelBundle, **groups: dict[str, Any]
) -> AsyncIterator[GatewayServer]:
    config = serve_config(**groups)
    engine = LLMEngine(config.engine_config(), bundle=bundle)
    server = await build_embedded(config, engine)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def new_key() -> str:
    return "sk-test-" + secrets.token_hex(16)
