"""The model's linear layer and the kernels it multiplies with, one chosen per layer at load.

Each kernel is one weight form (the plain float weight in a CPU orientation, oneDNN's blocked
layout, a bfloat16 copy, the GGUF weight blocks of the int8 kernel, ...), prepared once from
the layer's weight; ``Projection.forward`` then calls it with no per-call checks. The torch
backend names the form it wants (engine.backends.torch_backend.linear_kernel_for), the ONNX
export its own (``export``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from types import ModuleType
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.block_weights import pack_scales, to_blocks

_CHUNKED_MIN_OUT = 16384
_STORED_TRANSPOSE_MIN_ROWS = 256
_CHUNK_ROWS = 4096
_SMALL_BATCH_MAX_ROWS = 4  # engine/kernels/small_batch_linear.cpp


class LinearKernel(ABC):
    """One way of computing x [rows, in] -> x @ W^T [rows, out], prepared once at load."""

    name: ClassVar[str]
    frees_plain_weight: ClassVar[bool] = False
    """True when the kernel holds W in a form of its own, so the plain weight may be freed."""

    @classmethod
    @abstractmethod
    def build(cls, layer: Projection, native: ModuleType | None) -> LinearKernel:
        """Prepare this form from ``layer``'s weight (``native``: engine.kernels, if built)."""

    @abstractmethod
    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` is the layer's plain [out, in] weight (empty where it was freed)."""


LINEAR_KERNELS: dict[str, type[LinearKernel]] = {}


def register_linear_kernel(name: str) -> Callable[[type[LinearKernel]], type[LinearKernel]]:
    """Class decorator adding a kernel to LINEAR_KERNELS under ``name``."""

    def wrap(cls: type[LinearKernel]) -> type[LinearKernel]:
        cls.name = name
        LINEAR_KERNELS[name] = cls
        return cls

    return wrap


def onednn_runs_bfloat16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX-512 BF16, AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@register_linear_kernel("device")
class DeviceLinear(LinearKernel):
    """F.linear on the weight's device (CUDA): the library's own choice of GEMM."""

    @classmethod
    def build(cls, layer: Projection, native: ModuleType | None) -> LinearKernel:
        return cls()

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight)


@register_linear_kernel("export")
class ExportLinear(LinearKernel):
    """One MatMul with a constant [in, out] weight: what ONNX Runtime's quantizers and TensorRT
    recognise (the CPU orientation tricks are eager-only)."""

    @classmethod
    def build(cls, layer: Projection, native: ModuleType | None) -> LinearKernel:
        return cls()

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, weight.t())


@register_linear_kernel("cpu-float")
class CpuFloatLinear(LinearKernel):
    """The plain weight on CPU, in the orientation fastest for the row count.

    Measured on 2 AVX2 cores (bench/results/matmul_orientation.md): for 2-255 rows,
    (W @ x^T)^T is 1.2-4x faster than F.linear because MKL splits the large output dimension
    across threads; for one row (single-stream decode) and for long prefill chunks, x @ W^T
    with W^T stored contiguous is fastest (``weight_t``, kept by ``cpu-float-transposed``).
    """

    def __init__(
        self, out_features: int, contiguous_output: bool, weight_t: torch.Tensor | None = None
    ) -> None:
        self.out_features = out_features
        self.contiguous_output = contiguous_output
        self.weight_t = weight_t  # [in, out] contiguous, or None

    @classmethod
    def build(cls, layer: Projection, native: ModuleType | None) -> LinearKernel:
        return cls(layer.out_features, layer.contiguous_output)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows == 1 or rows >= _STORED_TRANSPOSE_MIN_ROWS:
            if self.weight_t is not None:
                return torch.mm(x, self.weight_t)
            if rows == 1:
                return F.linear(x, weight)
        if self.out_features >= _CHUNKED_MIN_OUT:
            return self._chunked(x, weight)
        out = torch.mm(weight, x.t()).t()
        # Q/K/V go to SDPA, whose flash kernel needs a unit-stride last dimension.
        return out.contiguous() if self.contiguous_output else out

    def _chunked(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # A vocabulary-sized weight is multiplied in row slices that stay in cache
        # (measured 1.3x faster for the LM head at 32 rows).
        out = torch.empty(self.out_features, x.shape[0], dtype=x.dtype)  # [out, rows]
        xt = x.t()
        for start in range(0, self.out_features, _CHUNK_ROWS):
            end = min(start + _CHUNK_ROWS, self.out_features)
            torch.mm(weight[start:end], xt, out=out[start:end])
        return out.t().contiguous()


@register_linear_kernel("cpu-float-transposed")
class TransposedCpuFloatLinear(CpuFloatLinear):
    """``cpu-float`` that also keeps W^T [in, out] contiguous, for one row and long chunks,
    trading memory for single-stream decode speed. Only for layers that widen (out >= in):
    for narrowing ones such as the MLP's down projection, one-row F.linear streams faster."""

    @classmethod
    def build(cls, layer: Projection, native: ModuleType | None) -> LinearKernel:
        widens = layer.out_features >= layer.in_features
        weight_t = layer.weight.detach().t().contiguous() if widens else None
        return cls(layer.out_features, layer.contiguous_output, weight_t)


@register_linear_kernel("bfloat16")
class BFloat16Linear(LinearKernel):
    """A bfloat16 copy of W, float32 activations in and out, where oneDNN has no native bf16.

    On AVX2 the bf16 GEMM streams half the bytes and runs 2.7x faster at 32 rows;
    accumulation stays float32 (bench/results/engine_throughput-*.md).
    """

    def __init__(self, weight_bf16: torch.Tensor) -> None:
        self.weight_bf16 = weight_bf16  # [out, in] bfloat16

    @classmethod
    def build(cls, layer: Projection, native: ModuleType | None) -> LinearKernel:
        return cls(layer.weight.detach().to(torch.bfloat16))

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        if x.shape[0] == 1:
            return F.linear(xb, self.weight_bf16).to(x.dtype)
        out = torch.mm(self.weight_bf16, xb.t()).t()
        # The cast back must not keep the transposed strides: SDPA's flash kernel
        # needs a unit-stride last dimension (else it silently takes the math path).
        return out.to(x.dtype, memory_format=torch.contiguous_format)


@register_linear_kernel("onednn")
class OneDnnLinear(LinearKernel):
    """W reordered once into oneDNN's blocked layout (CPU): on 2 AVX-512 cores that made a
    step's matmuls 1.7-2.4x faster at every row count
    (bench/results/matmul_orientation-2026-12-01.md)."""

    frees_plain_weight = True
    weight_dtype: ClassVar[torch.dtype] = torch.float32

    def __init__(self, packed: torch.Tensor) -> None:
        self.packed = packed

    @classmethod
    def build(cls, layer: Projection, native: ModuleType | None) -> LinearKernel:
        w = layer.weight.detach().to(cls.weight_dtype)
        return cls(torch.ops.mkldnn._reorder_linear_weight(w, None))

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        packed = self.packed
        out = torch.ops.mkldnn._linear_pointwise(
            x.to(packed.dtype).contiguous(), packed, None, "none", [None], ""
        )
        return out.to(x.dtype)


@register_linear_kernel("onednn-bfloat16")
class OneDnnBFloat16Linear(OneDnnLinear):
    """``onednn`` with bfloat16 weights and inputs, float32 out (CPUs with native bf16)."""

    weight_dtype = torch.bfloat16


@register_linear_kernel("onednn-small-batch")
class SmallBatchLinear(LinearKernel):
    """``onednn``, but batches of up to 4 rows (decode of a few sequences, bound by reading the
    weights) go through ``native.small_batch_linear`` over the plain float32 [out, in] weight,
    which is kept: it streams 1.6x faster than oneDNN's blocked layout here."""

    def __init__(self, native: ModuleType, onednn: LinearKernel) -> None:
        self.native, self.onednn = native, onednn

    @classmethod
    def build(cls, layer: Projection, native: ModuleType | None) -> LinearKernel:
        if native is None:
            raise ValueError("the small-batch kernel needs the native CPU kernels")
        return cls(native, OneDnnLinear.build(layer, native))

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= _SMALL_BATCH_MAX_ROWS:
            return self.native.small_batch_linear(x, weight)
        return self.onednn(x, weight)


@register_linear_kernel("int8-blocks")
class BlockLinear(LinearKernel):
    """``native.block_linear`` over the weight's blocks of 32 (its own GGUF grid, exactly,
    where it lies on one: engine/model/block_weights.py), int16 activations, float32 out."""

    frees_plain_weight = True

    def __init__(
        self,
        native: ModuleType,
        packed: torch.Tensor,
        d: torch.Tensor,
        m: torch.Tensor | None,
        out_features: int,
        bits: int,
        exact: bool,
    ) -> None:
        self.native, self.packed, self.d, self.m = native, packed, d, m
        self.out_features, self.bits = out_features, bits
        self.exact = exact
        """True when the blocks reproduce the float weight bit for bit."""

    @classmethod
    def build(cls, layer: Projection, native: ModuleType | None) -> LinearKernel:
        if native is None:
            raise ValueError("the int8 block kernel needs the native CPU kernels")
        found = to_blocks(layer.weight)
        return cls(
            native,
            native.pack_block_weight(found.q, found.bits),
            pack_scales(found.d),
            None if found.m is None else pack_scales(found.m),
            layer.out_features,
            found.bits,
            found.exact,
        )

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.native.block_linear(
            x, self.packed, self.d, self.m, self.out_features, self.bits
        )

    def stack_arguments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, int]:
        """This weight as kernels.BlockDecodeStack takes it: packed, d, m, n, bits."""
        return self.packed, self.d, self.m, self.out_features, self.bits


class Projection(nn.Linear):
    """A bias-free linear layer multiplying through the kernel chosen for it at load.

    Until one is chosen it multiplies the plain weight on CPU (``cpu-float``).
    """

    def __init__(
        self, in_features: int, out_features: int, contiguous_output: bool = False
    ) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.contiguous_output = contiguous_output
        self.kernel: LinearKernel = CpuFloatLinear(out_features, contiguous_output)

    def use_kernel(
        self, name: str, native: ModuleType | None = None, keep_plain: bool = False
    ) -> LinearKernel:
        """Multiply through the kernel registered as ``name``, prepared from the weight now.
        The plain weight is freed where the kernel holds its own form, unless ``keep_plain``
        (a weight that the embedding table shares)."""
        if name not in LINEAR_KERNELS:
            known = ", ".join(sorted(LINEAR_KERNELS))
            raise ValueError(f"unknown linear kernel {name!r}; available: {known}")
        kernel = LINEAR_KERNELS[name].build(self, native)
        if kernel.frees_plain_weight and not keep_plain:
            self.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        self.kernel = kernel
        return kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [rows, in] -> [rows, out]
        return self.kernel(x, self.weight)
