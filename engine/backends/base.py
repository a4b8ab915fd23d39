"""The one contract every backend implements: flat paged-KV inputs in, logits out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from engine.config import BackendConfig
from engine.model_source import ModelBundle


class BackendConfigError(ValueError):
    """The backend refuses a setting or model (a mixture of experts on ONNX, int8 off the
    CPU, a KV block size its graph was not built for, ...): said in one line at start-up."""


class BackendUnavailableError(RuntimeError):
    """What the settings ask for is missing here (an ONNX Runtime provider, a CUDA device,
    the native CPU kernels): said in one line at start-up."""


@dataclass
class BatchInputs:
    """One step's batch, flattened over sequences (the same for every backend)."""

    token_ids: np.ndarray  # [num_tokens] int64
    positions: np.ndarray  # [num_tokens] int64, absolute position of each token
    slot_mapping: np.ndarray  # [num_tokens] int64, block_id * block_size + offset
    block_tables: np.ndarray  # [num_seqs, max_blocks] int64, padded with 0
    context_lens: np.ndarray  # [num_seqs] int64, tokens with KV after this step
    query_start_loc: np.ndarray  # [num_seqs + 1] int64, each sequence's first row
    logits_indices: np.ndarray  # [num_rows] int64, rows whose next-token logits are needed

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])


@dataclass(frozen=True)
class BackendTarget:
    """What the engine asks of a backend: its settings as given, beside what the engine
    resolved. Each backend reads its own knobs from here, in one place (Backend.options_from).
    """

    config: BackendConfig
    device: str  # cpu, cuda or cuda:N: config.device with auto resolved
    dtype: str  # float32, bfloat16 or float16: config.dtype with auto resolved
    quantization: str  # none or int8: this candidate's (config.quantization may say auto)
    max_model_len: int  # the context length the engine serves
    cache_dir: Path  # where converted models and built artifacts are kept

    @classmethod
    def resolve(cls, config: BackendConfig, max_model_len: int, cache_dir: Path) -> BackendTarget:
        """Resolve ``auto`` device and dtype here (cuda when visible; bfloat16 on CUDA, else
        float32); an ``auto`` quantization stays the choice of engine.backend_choice."""
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        quantization = "none" if config.quantization == "auto" else config.quantization
        return cls(config, device, dtype, quantization, max_model_len, cache_dir)

    def with_quantization(self, quantization: str) -> BackendTarget:
        """The same target for another candidate mode."""
        return replace(self, quantization=quantization)


@dataclass(frozen=True)
class BackendOptions:
    """What every backend runs with; each backend extends it with its own knobs."""

    device: str
    dtype: str
    quantization: str
    num_threads: int | None  # CPU threads (None: all cores)
    max_model_len: int

    @staticmethod
    def shared(target: BackendTarget) -> dict[str, Any]:
        """The fields every backend's options take from ``target`` as they are."""
        return {
            "device": target.device,
            "dtype": target.dtype,
            "quantization": target.quantization,
            "num_threads": target.config.num_threads,
            "max_model_len": target.max_model_len,
        }

    def identity(self) -> dict[str, Any]:
        """The fields a cached gate verdict and speed depend on: all but the context length,
        which only sizes position tables."""
        return {k: v for k, v in asdict(self).items() if k != "max_model_len"}


class Backend(ABC):
    """Runs the model over a paged KV pool that stays resident between steps."""

    name: ClassVar[str]

    def __init__(self, bundle: ModelBundle, options: BackendOptions) -> None:
        self.bundle = bundle
        self.options = options
        self.block_size = 16
        self.num_blocks = 0

    @classmethod
    @abstractmethod
    def options_from(cls, target: BackendTarget) -> BackendOptions:
        """This backend's options, built from the engine's settings (the one place it reads
        them); pure and cheap, so cached verdicts are found without building the backend."""

    def activate(self) -> None:  # noqa: B027 - a hook: most backends have no such setting
        """Re-apply the process-wide settings this backend runs with (torch's thread count),
        which building another backend in this process may have changed."""

    @abstractmethod
    def kv_bytes_per_block(self, block_size: int) -> int:
        """Bytes one block takes across all layers (K and V)."""

    @abstractmethod
    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """(Re)allocate the KV pool; previous contents are lost."""

    @abstractmethod
    def forward(self, inputs: BatchInputs) -> torch.Tensor:
        """Compute logits [num_rows, vocab] (float32, CPU) and cache every token's KV."""

    def available_memory(self) -> int | None:
        """Free device memory in bytes now, or None when it cannot be known."""
        return None


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator adding a backend to the registry under ``name``."""

    def wrap(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return wrap


def backend_class(name: str) -> type[Backend]:
    """The registered backend ``name``, or an error naming the ones that exist."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]


def create_backend(name: str, bundle: ModelBundle, target: BackendTarget) -> Backend:
    """Instantiate a registered backend with the options it builds from ``target``."""
    cls = backend_class(name)
    return cls(bundle, cls.options_from(target))
