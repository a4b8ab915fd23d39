"""`tessera serve`: gateway and engine in one process, the engine reached in-process
through the same EngineClient interface the gateway uses for remote engine pods."""

from __future__ import annotations

import asyncio
import logging

from engine.async_engine import AsyncEngine
from engine.llm_engine import LLMEngine
from engine.metrics import EngineMetrics
from engine.service.client import LocalEngineClient
from gateway.config import ServeConfig
from gateway.core import Gateway
from gateway.server import GatewayServer

log = logging.getLogger(__name__)


async def build_embedded(config: ServeConfig, engine: LLMEngine | None = None) -> GatewayServer:
    """Load the engine (unless given) and put it behind a gateway; not yet serving."""
    core = (
        engine if engine is not None else await asyncio.to_thread(LLMEngine, config.engine_config())
    )
    gateway = Gateway(config.gateway_config())
    holder: list[AsyncEngine] = []
    metrics = EngineMetrics(gateway.registry, lambda: holder[0].stats())
    aengine = AsyncEngine(core, observer=metrics)
    holder.append(aengine)
    gateway.pool.add_client("local", LocalEngineClient(aengine))
    server = GatewayServer(gateway)

    async def shutdown() -> None:
        await asyncio.to_thread(aengine.shutdown)

    server.on_stop.append(shutdown)
    return server


def banner(server: GatewayServer) -> str:
    h = server.config.http
    models = ", ".join(server.gateway.pool.models()) or "(none)"
    base = f"http://{h.host}:{server.port}/v1"
    return (
        f"Tessera is serving {models} at {base} (gRPC {h.host}:{server.grpc_port}). Try:\n"
        f"  curl {base}/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{models.split(",")[0]}", '
        f'"messages": [{{"role": "user", "content": "Hello!"}}]}}\''
    )
