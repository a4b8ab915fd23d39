"""Typed errors of the RAG sidecar, shared by the service, its HTTP API and its clients.

Each error knows its HTTP status and OpenAI-style ``type``/``code``, so the API
renders it and the HTTP client turns the same body back into the same class.
"""

from __future__ import annotations


class RagError(Exception):
    """Base class: a message for the caller, an HTTP status and OpenAI-style type/code."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI error body: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidInputError(RagError):
    """The request is malformed or asks for something impossible (HTTP 400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class CollectionNotFoundError(RagError):
    """The named collection does not exist (HTTP 404)."""

    status = 404
    type = "invalid_request_error"
    code = "collection_not_found"


class CollectionExistsError(RagError):
    """A collection of that name already exists (HTTP 409)."""

    status = 409
    type = "invalid_request_error"
    code = "collection_exists"


class DocumentNotFoundError(RagError):
    """The collection has no document with that id (HTTP 404)."""

    status = 404
    type = "invalid_request_error"
    code = "document_not_found"


class ModelNotFoundError(RagError):
    """The embeddings request names a model this sidecar does not serve (HTTP 404)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RequestTooLargeError(RagError):
    """The request body is over the configured limit (HTTP 413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RagUnavailableError(RagError):
    """The sidecar is loading, draining or unreachable; retry elsewhere or later (HTTP 503)."""

    status = 503
    type = "server_error"
    code = "unavailable"


_BY_CODE: dict[str, type[RagError]] = {
    cls.code: cls
    for cls in (
        InvalidInputError,
        CollectionNotFoundError,
        CollectionExistsError,
        DocumentNotFoundError,
        ModelNotFoundError,
        RequestTooLargeError,
        RagUnavailableError,
    )
    if cls.code is not None
}


def error_from_body(status: int, body: object) -> RagError:
    """The typed error an HTTP error response stands for (used by the HTTP client)."""
    err = body.get("error") if isinstance(body, dict) else None
    message = str(err.get("message")) if isinstance(err, dict) else f"HTTP {status}"
    param = err.get("param") if isinstance(err, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    cls = _BY_CODE.get(str(code)) if code else None
    if cls is None:
        cls = {400: InvalidInputError, 422: InvalidInputError, 503: RagUnavailableError}.get(
            status, RagError
        )
    return cls(message, param if isinstance(param, str) else None)
