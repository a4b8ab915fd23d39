"""Optional OpenTelemetry tracing: on only when the `otel` extra is installed and an OTLP
endpoint is configured (the standard OTEL_EXPORTER_OTLP_ENDPOINT variable).

It instruments the servers and clients the services already use — FastAPI (gateway and
RAG HTTP), gRPC (gateway to engine) and httpx (gateway to RAG) — so a request's spans
link across processes through the W3C ``traceparent`` those instrumentations propagate.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"


def configure_tracing(service: str, exporter: Any = None) -> bool:
    """Install a tracer provider exporting ``tessera-<service>`` spans; True when on.

    ``exporter`` replaces the OTLP exporter (tests pass an in-memory one).
    """
    if exporter is None and not os.environ.get(ENDPOINT_VARIABLE):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.instrumentation.grpc import (
            GrpcAioInstrumentorClient,
            GrpcAioInstrumentorServer,
        )
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as e:
        log.warning(
            "%s is set but tracing is off: install tessera[otel] (%s)", ENDPOINT_VARIABLE, e
        )
        return False
    resource = Resource.create({"service.name": f"tessera-{service}"})
    provider = TracerProvider(resource=resource)
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # before any app or channel exists: the instrumentors patch the classes the services use
    FastAPIInstrumentor().instrument(tracer_provider=provider)
    GrpcAioInstrumentorServer().instrument(tracer_provider=provider)
    GrpcAioInstrumentorClient().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    log.info("tracing to %s", os.environ.get(ENDPOINT_VARIABLE, "a test exporter"))
    return True
