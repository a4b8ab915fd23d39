"""The embedded stack of `tessera serve`, composed: the gateway, an in-process engine reached
through the same EngineClient interface the gateway uses for remote engine pods, and the
RAG service.

This is the one module that knows both sides; the gateway package imports only the
engine's and RAG's contracts (engine.api, services.rag.client).
"""

from __future__ import annotations

import asyncio
import logging

from engine.async_engine import AsyncEngine
from engine.llm_engine import LLMEngine
from engine.local_client import LocalEngineClient
from engine.metrics import EngineMetrics
from gateway.core import Gateway
from gateway.server import GatewayServer
from services.rag.config import RagConfig
from services.rag.local_client import InProcessRagClient
from services.rag.server import RagServer
from tessera.commands.serve import ServeConfig

log = logging.getLogger(__name__)


async def build_embedded(config: ServeConfig, engine: LLMEngine | None = None) -> GatewayServer:
    """Load the engine (unless given) and put it behind a gateway; not yet serving."""
    rag_server = await _start_rag(config) if config.rag.enabled else None
    rag_client = InProcessRagClient(rag_server.service) if rag_server else None
    gateway = Gateway(
        config.gateway_config(),
        rag=rag_client,
        embedding_model=rag_server.service.model_name if rag_server else None,
    )
    holder: list[AsyncEngine] = []
    metrics = EngineMetrics(gateway.registry, lambda: holder[0].stats())
    # Built on the engine thread (AsyncEngine: one OpenMP team), off the event loop.
    source = engine if engine is not None else (lambda: LLMEngine(config.engine_config()))
    aengine = await asyncio.to_thread(AsyncEngine, source, metrics)
    core = aengine.engine
    holder.append(aengine)
    gateway.pool.add_client("local", LocalEngineClient(aengine))
    server = GatewayServer(gateway)
    cap = core.capacity
    server.engine_summary = (
        f"{cap.backend} {cap.quantization} on {cap.device}: {cap.backend_reason}\n"
        f"{cap.pool_summary()}\n{core.speculation_summary()}"
    )

    async def shutdown() -> None:
        await asyncio.to_thread(aengine.shutdown)

    server.on_stop.append(shutdown)
    if rag_server is not None:
        server.on_stop.append(rag_server.stop)
        server.rag_port = rag_server.port
    return server


async def _start_rag(config: ServeConfig) -> RagServer:
    """The RAG service in this process, its HTTP API (collections, ingest) on its own port."""
    overrides: dict[str, dict[str, object]] = {
        "server": {"host": config.http.host, "port": config.rag.port}
    }
    if config.rag.data_dir is not None:
        overrides["index"] = {"data_dir": config.rag.data_dir}
    rag = RagServer(RagConfig(**overrides))  # type: ignore[arg-type]
    await rag.start()
    await rag.load()
    return rag


def banner(server: GatewayServer) -> str:
    h = server.config.http
    models = ", ".join(server.gateway.pool.models()) or "(none)"
    base = f"http://{h.host}:{server.port}/v1"
    rag = f", RAG API :{server.rag_port}" if server.rag_port else ""
    engine = f"Engine backend: {server.engine_summary}\n" if server.engine_summary else ""
    return (
        engine
        + f"Tessera is serving {models} at {base} (gRPC {h.host}:{server.grpc_port}{rag}). Try:\n"
        f"  curl {base}/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{models.split(",")[0]}", '
        f'"messages": [{{"role": "user", "content": "Hello!"}}]}}\''
    )
