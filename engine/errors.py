"""Errors the engine raises at its door; servers map them to status codes."""

from engine.scheduler import QueueFullError


class InvalidRequestError(ValueError):
    """The request cannot be served as asked (bad prompt, too long, duplicate id)."""


class PromptTooLongError(InvalidRequestError):
    """The prompt leaves no room for a single generated token in the context."""


__all__ = ["InvalidRequestError", "PromptTooLongError", "QueueFullError"]
