"""Backends behind one interface; importing this package registers the built-in ones."""

from engine.backends import onnx_backend as _onnx_backend  # noqa: F401  (onnx, tensorrt)
from engine.backends import torch_backend as _torch_backend  # noqa: F401  (registers "torch")
from engine.backends.base import (
    BACKENDS,
    Backend,
    BackendConfigError,
    BackendOptions,
    BackendTarget,
    BackendUnavailableError,
    BatchInputs,
    backend_class,
    create_backend,
    register_backend,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfigError",
    "BackendOptions",
    "BackendTarget",
    "BackendUnavailableError",
    "BatchInputs",
    "backend_class",
    "create_backend",
    "register_backend",
]
