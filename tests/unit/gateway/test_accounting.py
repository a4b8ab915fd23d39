"""The one accounting path of REST and gRPC calls: auth, request ids, cache bypass, ends."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gateway.accounting import Accounting, bypasses_cache, request_id_from
from gateway.auth import APIKeyStore
from gateway.errors import APIError
from gateway.metrics import GatewayMetrics
from gateway.settings_parts import AuthConfig


def _accounting(keys: list[str]) -> tuple[Accounting, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, lambda: (1, 1))
    return Accounting(APIKeyStore.from_config(AuthConfig(api_keys=keys)), metrics), registry


@pytest.mark.parametrize(
    ("headers", "bypass"),
    [
        ({"cache-control": "no-cache"}, True),
        ({"cache-control": "max-age=0, No-Cache"}, True),
        ({"cache-control": "no-store"}, False),
        ({"x-tessera-cache": "BYPASS"}, True),
        ({}, False),
    ],
)
def test_cache_bypass_from_headers_or_metadata(headers: dict[str, str], bypass: bool) -> None:
    assert bypasses_cache(headers) is bypass


def test_client_request_id_is_kept_only_when_safe() -> None:
    assert request_id_from("abc-123_x") == "abc-123_x"
    assert request_id_from("bad id\nwith newline") != "bad id\nwith newline"
    assert len(request_id_from(None)) == 16


def test_open_authenticates_and_counts_a_refusal_once() -> None:
    accounting, registry = _accounting(["sk-good"])
    ctx = accounting.open("chat", {"authorization": "Bearer sk-good", "x-request-id": "r1"})
    assert (ctx.request_id, ctx.route, ctx.bypass_cache) == ("r1", "chat", False)
    with pytest.raises(APIError) as err:
        accounting.open("grpc_chat", {"authorization": "Bearer sk-bad", "x-request-id": "r2"})
    assert err.value.status == 401 and err.value.request_id == "r2"
    # the front hands the same error back to fail(): recorded once, not twice
    assert accounting.fail(None, "grpc_chat", err.value) is err.value
    sample = registry.get_sample_value
    assert sample("tessera_gateway_requests_total", {"route": "grpc_chat", "status": "401"}) == 1
    assert sample("tessera_gateway_auth_failures_total") == 1


def test_fail_turns_a_bug_into_a_500_with_an_incident_and_records_the_end() -> None:
    accounting, registry = _accounting([])
    ctx = accounting.open("completions", {})
    error = accounting.fail(ctx, "completions", RuntimeError("boom"))
    assert error.status == 500 and "incident" in error.message and "boom" not in error.message
    labels = {"route": "completions", "status": "500"}
    assert registry.get_sample_value("tessera_gateway_requests_total", labels) == 1
    ok = accounting.open("completions", {})
    accounting.close(ok, 200)
    count = registry.get_sample_value(
        "tessera_gateway_request_duration_seconds_count", {"route": "completions"}
    )
    assert count == 1  # failures are counted, not timed
