"""API errors in OpenAI's shape, and how engine-side failures become them."""

from __future__ import annotations

from typing import Any

from engine.api import InvalidRequestError, PromptTooLongError, QueueFullError, SamplingParamsError


class APIError(Exception):
    """An error the client sees: HTTP status + OpenAI error object (message, type, param, code)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.request_id: str | None = None
        """The call's request id once known (sent back as X-Request-Id)."""

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def unsupported(param: str, what: str) -> APIError:
    return APIError(
        400,
        f"{what} is not supported by this server",
        "invalid_request_error",
        param,
        "unsupported_parameter",
    )


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def overloaded(message: str, retry_after: float, status: int = 429) -> APIError:
    kind = "rate_limit_error" if status == 429 else "service_unavailable_error"
    return APIError(status, message, kind, None, "overloaded", retry_after)


def from_engine_error(error: Exception) -> APIError | None:
    """The API error for an engine refusal, or None when it is not the request's fault."""
    if isinstance(error, PromptTooLongError):
        return APIError(
            400, str(error), "invalid_request_error", "messages", "context_length_exceeded"
        )
    if isinstance(error, SamplingParamsError):
        param = str(error).split(" ", 1)[0]
        return bad_request(str(error), param=param)
    if isinstance(error, InvalidRequestError):
        first = str(error).split(" ", 1)[0]
        return bad_request(
            str(error), first if first in ("structured_outputs", "logit_bias") else None
        )
    if isinstance(error, QueueFullError):
        return overloaded(str(error), error.retry_after or 1.0)
    return None
