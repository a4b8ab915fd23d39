"""The engines the gateway routes to: discovered (static list or DNS), health-checked,
chosen by a policy, retried elsewhere while no token has reached the client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from engine.api import (
    EngineCallError,
    EngineClient,
    EngineInfo,
    EngineUnavailableError,
    GenerationStream,
    Prompt,
    QueueFullError,
    RequestOutput,
    SamplingParams,
)
from engine.api.grpc_client import GrpcEngineClient
from gateway.engines.routing import Endpoint, RoutingPolicy
from gateway.errors import APIError, model_not_found, overloaded

log = logging.getLogger(__name__)

RETRYABLE = (EngineUnavailableError, EngineCallError, QueueFullError)
"""Failures that are the engine's, not the request's: try another engine."""


@dataclass(frozen=True)
class PoolSettings:
    engines: tuple[str, ...] = ()
    dns: str | None = None
    health_interval: float = 1.0
    failures_to_eject: int = 1


class EnginePool:
    """Endpoints by name; a background task refreshes discovery and health."""

    def __init__(
        self,
        settings: PoolSettings,
        policy: RoutingPolicy,
        client_factory: Callable[[str], EngineClient] = GrpcEngineClient,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self._factory = client_factory
        self.endpoints: dict[str, Endpoint] = {}
        self._task: asyncio.Task[None] | None = None
        self.on_change: Callable[[EnginePool], None] | None = None
        self.on_failure: Callable[[str], None] | None = None

    def add_client(self, name: str, client: EngineClient) -> Endpoint:
        """Add an engine known in-process (embedded mode) or for tests."""
        endpoint = Endpoint(name, client)
        self.endpoints[name] = endpoint
        return endpoint

    # ---- discovery and health --------------------------------------------------------
    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="engine-pool")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for e in self.endpoints.values():
            with contextlib.suppress(Exception):
                await e.client.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("engine refresh failed")

    async def _discover(self) -> set[str] | None:
        names = set(self.settings.engines)
        if self.settings.dns:
            host, _, port = self.settings.dns.rpartition(":")
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, int(port), type=socket.SOCK_STREAM
                )
            except OSError as e:
                log.warning("DNS lookup of %s failed: %s", self.settings.dns, e)
                return None  # keep what we have
            for family, *_, addr in infos:
                ip = addr[0]
                names.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
        return names

    async def refresh(self) -> None:
        """Re-resolve the engine list, then health-check every engine once."""
        names = await self._discover()
        if names is not None and (self.settings.engines or self.settings.dns):
            for name in names - self.endpoints.keys():
                self.endpoints[name] = Endpoint(name, self._factory(name))
                log.info("engine %s added", name)
            for name in self.endpoints.keys() - names:
                gone = self.endpoints.pop(name)
                log.info("engine %s removed", name)
                with contextlib.suppress(Exception):
                    await gone.client.close()
        await asyncio.gather(*(self._check(e) for e in list(self.endpoints.values())))
        if self.on_change is not None:
            self.on_change(self)

    async def _check(self, endpoint: Endpoint) -> None:
        try:
            info = await asyncio.wait_for(endpoint.client.info(), self.settings.health_interval)
        except Exception as e:  # any failure: eject until it answers again
            self.mark_failed(endpoint, f"health check: {type(e).__name__}: {e}", "health_check")
            return
        endpoint.info = info
        if info.accepting and not endpoint.healthy:
            log.info("engine %s is healthy (%s)", endpoint.name, info.model)
        if not info.accepting and endpoint.healthy:
            log.warning("engine %s stopped accepting (warming or draining)", endpoint.name)
        endpoint.healthy = info.accepting
        endpoint.consecutive_failures = 0

    def mark_failed(self, endpoint: Endpoint, why: str, kind: str) -> None:
        """Count a failure of the engine (kind: health_check, request, stream, queue_full)."""
        if self.on_failure is not None:
            self.on_failure(kind)
        if kind == "queue_full":
            return  # busy, not broken
        endpoint.consecutive_failures += 1
        if endpoint.healthy and endpoint.consecutive_failures >= self.settings.failures_to_eject:
            log.warning("engine %s ejected: %s", endpoint.name, why)
            endpoint.healthy = False

    # ---- what requests see -----------------------------------------------------------
    def healthy(self, model: str | None = None) -> list[Endpoint]:
        return [
            e
            for e in self.endpoints.values()
            if e.healthy and e.info is not None and (model is None or e.info.model == model)
        ]

    def models(self) -> dict[str, EngineInfo]:
        """Served model name -> the info of an engine serving it, over healthy engines."""
        return {e.info.model: e.info for e in self.healthy() if e.info}

    def require_model(self, model: str) -> int:
        """The model's context length, 404 when no engine serves it, 503 when none is up."""
        served = self.models()
        if model in served:
            return served[model].max_model_len
        if not self.healthy():
            raise overloaded("no engine is available; retry shortly", 1.0, status=503)
        raise model_not_found(model)

    async def generate(
        self,
        model: str,
        prompt: Prompt,
        params: SamplingParams,
        key: str | None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> RoutedStream:
        """Start the request on an engine chosen by the policy (see RoutedStream).

        ``request_id`` (the gateway's) goes with it, so the engine logs the same id.
        """
        stream = RoutedStream(self, model, prompt, params, key, timeout, request_id)
        await stream.start()
        return stream

    def choose(self, model: str, key: str | None, exclude: Sequence[Endpoint]) -> Endpoint | None:
        candidates = [e for e in self.healthy(model) if e not in exclude]
        return self.policy.choose(candidates, key) if candidates else None


class RoutedStream:
    """A request on one engine; moved to another engine while no token has been sent."""

    def __init__(
        self,
        pool: EnginePool,
        model: str,
        prompt: Prompt,
        params: SamplingParams,
        key: str | None,
        timeout: float | None,
        request_id: str | None = None,
    ) -> None:
        self._pool, self._model, self._prompt, self._params = pool, model, prompt, params
        self._key, self._timeout, self.request_id = key, timeout, request_id
        self._tried: list[Endpoint] = []
        self._stream: GenerationStream | None = None
        self.endpoint: Endpoint | None = None
        self.sent_tokens = False
        self.attempts = 0

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._stream.prompt_token_ids if self._stream else []

    def token_text(self, token_id: int) -> str:
        return self._stream.token_text(token_id) if self._stream else ""

    async def start(self) -> None:
        """Get the request accepted by some engine, or raise the APIError to send."""
        retry_after: float | None = None
        while True:
            endpoint = self._pool.choose(self._model, self._key, self._tried)
            if endpoint is None:
                if retry_after is not None:
                    raise overloaded("every engine is at capacity; retry shortly", retry_after)
                raise overloaded("no engine is available; retry shortly", 1.0, status=503)
            self._tried.append(endpoint)
            self.attempts += 1
            endpoint.outstanding += 1
            try:
                self._stream = await endpoint.client.generate(
                    self._prompt,
                    self._params,
                    timeout=self._timeout,
                    correlation_id=self.request_id,
                )
            except QueueFullError as e:
                endpoint.outstanding -= 1
                self._pool.mark_failed(endpoint, str(e), "queue_full")
                retry_after = min(retry_after or 1e9, e.retry_after or 1.0)
                continue
            except (EngineUnavailableError, EngineCallError) as e:
                endpoint.outstanding -= 1
                self._pool.mark_failed(endpoint, str(e), "request")
                continue
            except BaseException:
                endpoint.outstanding -= 1
                raise
            self.endpoint = endpoint
            endpoint.served += 1
            log.debug(
                "routed to %s",
                endpoint.name,
                extra={"request_id": self.request_id, "engine": endpoint.name},
            )
            return

    def _release(self) -> None:
        if self.endpoint is not None:
            self.endpoint.outstanding -= 1
            self.endpoint = None

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        try:
            while True:
                assert self._stream is not None
                try:
                    async for out in self._stream:
                        if any(d.token_ids for d in out.deltas):
                            self.sent_tokens = True
                        yield out
                    return
                except RETRYABLE as e:
                    if self.sent_tokens:
                        raise
                    assert self.endpoint is not None
                    self._pool.mark_failed(self.endpoint, str(e), "stream")
                    log.warning(
                        "engine %s failed before the first token; retrying elsewhere",
                        self.endpoint.name,
                    )
                    self._release()
                    await self.start()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop: aborts the engine request unless it finished."""
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()
        self._release()


def engine_error(error: BaseException) -> APIError:
    """The client-facing error for an engine failure after the request was accepted."""
    return APIError(
        502, f"the engine failed mid-request: {error}", "server_error", None, "engine_error"
    )
