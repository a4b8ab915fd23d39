"""The one accounting path every call takes, REST and gRPC alike: who is calling (auth),
its request id, whether it bypasses the caches, and at the end its status, latency and
access-log line. An error of any kind becomes an APIError here, once for both fronts."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import APIKeyStore, Principal, parse_api_key
from gateway.errors import APIError
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_from(given: str | None) -> str:
    """The client's request id when it is a safe token (it goes into logs and gRPC
    metadata), else a fresh one."""
    if given and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    return secrets.token_hex(8)


def bypasses_cache(headers: Mapping[str, str]) -> bool:
    """`Cache-Control: no-cache` (HTTP's way, or the same gRPC metadata) or the gateway's own
    `X-Tessera-Cache: bypass`."""
    directives = {d.strip().lower() for d in headers.get("cache-control", "").split(",")}
    return "no-cache" in directives or headers.get("x-tessera-cache", "").lower() == "bypass"


@dataclass
class RequestContext:
    """One call's facts: filled in when it opens, reported back through as it runs."""

    principal: Principal
    request_id: str
    route: str = ""
    """The metrics label: "chat", "completions", ..., prefixed "grpc_" on the gRPC front."""
    arrival: float = field(default_factory=time.perf_counter)
    bypass_cache: bool = False
    cache_status: str | None = None  # "hit", "miss", "bypass", "semantic-hit"; a header back
    stages: dict[str, float] = field(default_factory=dict)
    semantic: tuple[str, Any] | None = None  # (scope, conversation vector) to store the answer


class Accounting:
    """Opens and closes every call: authentication, request id, cache bypass; then the
    request counter, the latency histogram and the access log."""

    def __init__(self, keys: APIKeyStore, metrics: GatewayMetrics) -> None:
        self.keys = keys
        self.metrics = metrics

    def open(self, route: str, headers: Mapping[str, str]) -> RequestContext:
        """The call's context from its (lower-cased) headers or gRPC metadata; a 401 in
        OpenAI's shape for a missing or wrong key, counted and logged like any end."""
        t0 = time.perf_counter()
        rid = request_id_from(headers.get("x-request-id"))
        presented = parse_api_key(headers.get("authorization"), headers.get("api-key"))
        principal = self.keys.authenticate(presented)
        if principal is None:
            self.metrics.auth_failures.inc()
            error = APIError(
                401,
                "Incorrect API key provided."
                if presented
                else "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )
            self._record(route, rid, error.status, t0)
            error.request_id = rid
            raise error
        return RequestContext(principal, rid, route, t0, bypass_cache=bypasses_cache(headers))

    def close(self, ctx: RequestContext, status: int) -> None:
        """The call ended with ``status`` (HTTP's codes on both fronts)."""
        self._record(ctx.route, ctx.request_id, status, ctx.arrival)

    def fail(self, ctx: RequestContext | None, route: str, error: BaseException) -> APIError:
        """The APIError a failed call answers with (500 with an incident id for a bug), its
        end recorded unless the call never opened (open() records its own 401)."""
        if not isinstance(error, APIError):
            incident = secrets.token_hex(6)
            log.error("internal error %s on %s", incident, route, exc_info=error)
            error = APIError(500, f"internal error (incident {incident})", "server_error")
        if ctx is not None:
            error.request_id = ctx.request_id
            self.close(ctx, error.status)
        return error

    def _record(self, route: str, request_id: str, status: int, t0: float) -> None:
        seconds = time.perf_counter() - t0
        self.metrics.requests.labels(route, str(status)).inc()
        if status < 400:
            self.metrics.latency.labels(route).observe(seconds)
        log.info(
            "%s %d",
            route,
            status,
            extra={
                "request_id": request_id,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
            },
        )
