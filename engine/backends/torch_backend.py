"""The PyTorch eager backend: the reference, on CPU or CUDA."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from engine.backends.base import (
    Backend,
    BackendConfigError,
    BackendOptions,
    BackendTarget,
    BackendUnavailableError,
    BatchInputs,
    register_backend,
)
from engine.kernels import load_cpu_kernels
from engine.model.attention import AttentionMetadata, PagedAttention, PagedKVCache, PrefillSpan
from engine.model.decoder import DecoderModel
from engine.model.linear import BlockLinear, onednn_runs_bfloat16
from engine.model_source import ModelBundle

# Names the INT8 form in cached gate verdicts: a changed form must be gated afresh.
TORCH_INT8_FORM = "gguf-blocks-32-int16-activations-v1"
log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Float32 models up to this size keep a second weight copy on CPU, at twice the weight memory,
# for faster decode of one to four sequences: the plain weights for the native GEMV beside
# oneDNN's packed ones (1.6x its speed), or a transposed copy without oneDNN.
_DECODE_WEIGHT_COPY_MAX_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class TorchOptions(BackendOptions):
    """The torch backend's options (engine.config.BackendConfig documents each setting)."""

    weight_dtype: str  # same | bfloat16 (bf16 matmul weights, float32 activations; CPU)
    native_kernels: bool  # the compiled CPU kernels (engine/kernels), where a compiler exists
    form: str  # the weight form: a changed INT8 form is gated afresh


def linear_kernel_for(
    options: TorchOptions,
    device: torch.device,
    dtype: torch.dtype,
    native: ModuleType | None,
    weight_bytes: int,
) -> str:
    """The linear kernel (engine.model.linear) this backend's projections multiply with:
    int8 weight blocks, bfloat16 weights, or the fastest float form for the device."""
    cpu_float32 = device.type == "cpu" and dtype == torch.float32
    if options.quantization == "int8":
        if not cpu_float32:
            raise BackendConfigError(
                "backend torch's int8 mode is a CPU mode over float32 activations"
            )
        if native is None:
            raise BackendUnavailableError(
                "backend torch's int8 mode runs on the native CPU kernels (engine/kernels), "
                "which are turned off (--native-kernels false) or could not be built here"
            )
        return "int8-blocks"
    if options.weight_dtype == "bfloat16":
        if not cpu_float32:
            raise BackendConfigError(
                "--weight-dtype bfloat16 is a CPU mode over float32 activations"
            )
        native_bf16 = torch.backends.mkldnn.is_available() and onednn_runs_bfloat16()
        return "onednn-bfloat16" if native_bf16 else "bfloat16"
    if device.type != "cpu":
        return "device"
    copy = cpu_float32 and weight_bytes <= _DECODE_WEIGHT_COPY_MAX_BYTES
    if cpu_float32 and torch.backends.mkldnn.is_available():
        return "onednn-small-batch" if copy and native is not None else "onednn"
    return "cpu-float-transposed" if copy else "cpu-float"


@register_backend("torch")
class TorchBackend(Backend):
    """Eager DecoderModel (every family) with per-layer paged K/V pools."""

    options: TorchOptions

    @classmethod
    def options_from(cls, target: BackendTarget) -> TorchOptions:
        config = target.config
        return TorchOptions(
            **BackendOptions.shared(target),
            weight_dtype=config.weight_dtype,
            native_kernels=config.native_kernels,
            form=TORCH_INT8_FORM if target.quantization == "int8" else "float",
        )

    def __init__(self, bundle: ModelBundle, options: TorchOptions) -> None:
        super().__init__(bundle, options)
        if options.quantization not in ("none", "int8"):
            raise BackendConfigError(
                f"backend torch has no quantization mode {options.quantization!r}"
            )
        if options.dtype not in _DTYPES:
            raise BackendConfigError(
                f"unknown dtype {options.dtype!r}; use one of {sorted(_DTYPES)}"
            )
        if options.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("device cuda requested but no CUDA device is visible")
        self.activate()
        self.device = torch.device(options.device)
        self.dtype = _DTYPES[options.dtype]
        cpu_float32 = self.device.type == "cpu" and self.dtype == torch.float32
        kernels = load_cpu_kernels() if cpu_float32 and options.native_kernels else None
        cfg = bundle.config
        weight_bytes = cfg.num_parameters * self.dtype.itemsize
        # Chosen (or refused) before any weight is touched.
        linear = linear_kernel_for(options, self.device, self.dtype, kernels, weight_bytes)
        model = DecoderModel(cfg, max_positions=options.max_model_len)
        model.load_hf_weights(bundle.weights)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        # RoPE tables stay float32 so positions far out keep their precision.
        self.model.rotary.float()
        linears = self.model.use_linear_kernel(linear, kernels)
        if kernels is not None and linear == "int8-blocks":
            exact = sum(isinstance(k, BlockLinear) and k.exact for k in linears)
            log.info(
                "torch int8: %d of %d projections hold the model's own weight blocks exactly "
                "(the rest 8-bit blocks), int16 activations, %s kernel",
                exact,
                len(linears),
                kernels.block_linear_isa(),
            )
        self.caches: list[PagedKVCache] = []
        self.native_decode = self.native_store = None
        if kernels is not None:
            self.native_decode = kernels.paged_decode_attention
            self.native_store = kernels.store_kv
            self.model.use_native_kernels(kernels)
            if linear == "int8-blocks":
                self.model.use_decode_stack(kernels)

    def activate(self) -> None:
        # Always set: an ONNX backend built in this process leaves torch on one thread (auto
        # builds several candidates; the one it keeps may not be the last built).
        torch.set_num_threads(self.options.num_threads or len(os.sched_getaffinity(0)))

    def kv_bytes_per_block(self, block_size: int) -> int:
        cfg = self.bundle.config
        return cfg.kv_bytes_per_token(self.dtype.itemsize) * block_size

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        cfg = self.bundle.config
        self.caches = []  # release the old pool before taking the new one
        self.caches = [
            PagedKVCache(
                num_blocks,
                block_size,
                cfg.num_key_value_heads,
                cfg.head_dim,
                self.dtype,
                self.device,
                self.native_store,
                window=cfg.window(layer),
            )
            for layer in range(cfg.num_hidden_layers)
        ]
        self.num_blocks, self.block_size = num_blocks, block_size

    def available_memory(self) -> int | None:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free)
        return None

    @torch.inference_mode()
    def forward(self, inputs: BatchInputs) -> torch.Tensor:
        dev = self.device
        meta = self._metadata(inputs)
        logits = self.model(
            torch.from_numpy(inputs.token_ids).to(dev),
            torch.from_numpy(inputs.positions).to(dev),
            torch.from_numpy(inputs.logits_indices).to(dev),
            PagedAttention(self.caches, meta, self.bundle.config.attention_scale),
        )
        return logits.cpu()

    def _metadata(self, inputs: BatchInputs) -> AttentionMetadata:
        """Split the flat batch into one batched decode group and per-sequence prefills."""
        dev, bs = self.device, self.block_size
        qsl, ctx = inputs.query_start_loc, inputs.context_lens
        q_lens = np.diff(qsl)
        is_decode = q_lens == 1
        dec = np.nonzero(is_decode)[0]
        max_blocks = int(-(-ctx[dec].max() // bs)) if dec.size else 0
        dec_ctx = torch.from_numpy(ctx[dec])
        mask = None
        if self.native_decode is None:  # only the SDPA fallback needs an explicit mask
            key_pos = torch.arange(max_blocks * bs)
            mask = (key_pos[None] < dec_ctx[:, None]).view(len(dec), 1, 1, max_blocks * bs)
            mask = mask.to(dev)
        prefills = [
            PrefillSpan(
                token_start=int(qsl[i]),
                num_tokens=int(q_lens[i]),
                context_len=int(ctx[i]),
                block_ids=torch.from_numpy(
                    inputs.block_tables[i, : -(-int(ctx[i]) // bs)].copy()
                ).to(dev),
            )
            for i in np.nonzero(~is_decode)[0]
        ]
        return AttentionMetadata(
            slot_mapping=torch.from_numpy(inputs.slot_mapping).to(dev),
            decode_rows=torch.from_numpy(qsl[dec]).to(dev),
            decode_block_tables=torch.from_numpy(
                np.ascontiguousarray(inputs.block_tables[dec, :max_blocks])
            ).to(dev),
            decode_mask=mask,
            prefills=prefills,
            num_decodes=int(dec.size),
            decode_context_lens=dec_ctx,
            native_decode=self.native_decode,
        )
