"""The one error type a model source raises: its message is a single line for the user."""


class ModelSourceError(Exception):
    """A model could not be loaded; str(error) is one clear line naming what and why."""


def reason(e: BaseException) -> str:
    """An underlying exception as one short line (type and message, whitespace collapsed),
    for the "because" part of a ModelSourceError."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
