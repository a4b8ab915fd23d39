"""How the engine pod's errors map to gRPC status codes (tessera.grpc_errors applies it)."""

from __future__ import annotations

import logging
import uuid

import grpc
import jinja2

from engine.api import (
    EngineDeadError,
    EngineUnavailableError,
    InvalidRequestError,
    QueueFullError,
    SamplingParamsError,
)
from engine.model_source import ModelSourceError

log = logging.getLogger(__name__)

_INVALID = (InvalidRequestError, SamplingParamsError, ModelSourceError, jinja2.TemplateError)


def status_for(error: Exception) -> tuple[grpc.StatusCode, str, bool]:
    """(status code, client-safe message, retryable) for an error raised by a handler."""
    if isinstance(error, _INVALID):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error), False
    if isinstance(error, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), True
    if isinstance(error, EngineUnavailableError | EngineDeadError):
        return grpc.StatusCode.UNAVAILABLE, str(error), True
    incident = uuid.uuid4().hex[:12]
    log.error("internal error %s", incident, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal engine error (incident {incident})", False
