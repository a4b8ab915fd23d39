"""The one contract every backend implements: flat paged-KV inputs in, logits out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from engine.model_source import ModelBundle


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
class BackendOptions:
    """What a backend is asked to run on (see engine.config.BackendConfig)."""

    device: str = "cpu"
    dtype: str = "float32"
    quantization: str = "none"
    num_threads: int | None = None
    max_model_len: int = 2048
    # Float32 models up to this size keep a second weight copy on CPU, at twice the weight
    # memory, for faster decode of one to four sequences: the plain weights for the native
    # GEMV beside oneDNN's packed ones (1.6x its speed), or a transposed copy without oneDNN.
    cpu_decode_weight_copy_max_bytes: int = 2 * 1024**3
    weight_dtype: str = "same"  # "bfloat16": matmul weights in bf16, activations float32 (CPU)
    native_kernels: bool = True  # compiled CPU decode attention, where a compiler exists
    provider: str = "auto"  # ONNX Runtime execution provider: auto | cpu | cuda | tensorrt
    graph_optimization: str = "all"  # ONNX Runtime graph optimization level
    int8_scheme: str = "auto"  # dynamic (CPU) | qdq (static, calibrated) | auto by provider
    int8_lm_head: bool = True  # ONNX: quantize the vocabulary projection too (measured: README)
    artifact_dir: Path | None = None  # where built models are cached (default the model cache)


class Backend(ABC):
    """Runs the model over a paged KV pool that stays resident between steps."""

    name: ClassVar[str]

    def __init__(self, bundle: ModelBundle, options: BackendOptions) -> None:
        self.bundle = bundle
        self.options = options
        self.block_size = 16
        self.num_blocks = 0

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


def create_backend(name: str, bundle: ModelBundle, options: BackendOptions) -> Backend:
    """Instantiate a registered backend, or fail naming the ones that exist."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](bundle, options)
