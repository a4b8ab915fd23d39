"""Every error the engine raises at its door, whatever the transport; servers map them to
status codes (gRPC) and the gateway to OpenAI error bodies."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """The request cannot be served as asked (bad prompt, too long, duplicate id)."""


class PromptTooLongError(InvalidRequestError):
    """The prompt leaves no room for a single generated token in the context."""


class SamplingParamsError(ValueError):
    """A sampling parameter is out of range; the message names it."""


class QueueFullError(Exception):
    """The waiting queue is at its limit; the request is refused at once."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds the caller is advised to wait before retrying, when known."""


class EngineUnavailableError(Exception):
    """The engine is not accepting work now (loading, warming up, draining or unreachable)."""


class EngineDeadError(RuntimeError):
    """The engine thread stopped; in-flight and new requests fail with this."""


class EngineCallError(Exception):
    """A remote engine failed the call in a way that is not the request's fault."""
