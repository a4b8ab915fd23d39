"""The `tessera` subcommands, one module each."""

from __future__ import annotations


def start_up_errors() -> tuple[type[Exception], ...]:
    """What a server's start-up says in one line and exits 2 on: the user's to fix (a model
    that will not load, a KV budget too small, a setting the backend refuses, a missing
    provider or device, a file or port), never a bug's stack trace. Imported when asked: the
    model stack loads only where a command runs it."""
    from engine.backends import BackendConfigError, BackendUnavailableError
    from engine.model_source import ModelSourceError
    from engine.warmup import KVCapacityError

    return (
        ModelSourceError,
        KVCapacityError,
        BackendConfigError,
        BackendUnavailableError,
        OSError,
    )
