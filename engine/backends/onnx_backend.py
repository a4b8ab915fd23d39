"""ONNX Runtime backends: the exported step graph on the CPU, CUDA or TensorRT provider.

The KV pool is one tensor owned by the backend and bound to the session by pointer (I/O
binding): the graph gathers only the blocks a batch uses, and this step's K/V are written
back into the pool in place at their slots, so no step copies the pool.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from engine.backends.onnx_graph import (
    GRAPH_BLOCK_SIZE,
    GRAPH_VERSION,
    GraphOptions,
    build_model_file,
)
from engine.cpu_features import cpu_id
from engine.model.attention import kv_pool_tensor
from engine.model_source import ModelBundle
from engine.progress import Progress

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_OPT_LEVELS = ("disable", "basic", "extended", "all")


def _require_provider(provider: str) -> str:
    """The provider's ONNX Runtime name, or an error naming what is missing."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise BackendConfigError(
            f"unknown ONNX Runtime provider {provider!r}; use one of {list(PROVIDERS)}"
        )
    ep = PROVIDERS[provider]
    available = ort.get_available_providers()
    if ep not in available:
        hint = {
            "cuda": "install onnxruntime-gpu (pip install '.[gpu]') on a machine with CUDA",
            "tensorrt": "install onnxruntime-gpu and the TensorRT runtime libraries "
            "(deploy/docker/Dockerfile.gpu has both)",
        }.get(provider, "")
        raise BackendUnavailableError(
            f"{ep} is not available in this onnxruntime build (available: "
            f"{', '.join(available)}); {hint}"
        )
    return ep


@dataclass(frozen=True)
class OnnxOptions(BackendOptions):
    """The ONNX backends' options (engine.config.BackendConfig documents each setting)."""

    provider: str  # cpu | cuda | tensorrt (auto resolved by device)
    graph_optimization: str  # disable | basic | extended | all
    int8_scheme: str  # dynamic (CPU) | qdq (static, calibrated; auto on TensorRT)
    artifact_dir: Path  # where built models are cached
    form: str  # the step graph's version: a changed graph is built and gated afresh
    int8_lm_head: bool = True  # quantize the vocabulary projection too (measured: README)


@register_backend("onnx")
class OnnxBackend(Backend):
    """The step graph under ONNX Runtime; INT8 = dynamic on CPU, static QDQ for TensorRT.
    Serves every dense family; refuses mixture-of-experts models (BackendConfigError)."""

    forced_provider: str | None = None
    options: OnnxOptions

    @classmethod
    def options_from(cls, target: BackendTarget) -> OnnxOptions:
        config = target.config
        provider = cls.forced_provider or config.onnx_provider
        if provider == "auto":
            provider = "cuda" if target.device.startswith("cuda") else "cpu"
        scheme = config.int8_scheme
        if scheme == "auto":
            scheme = "qdq" if provider == "tensorrt" else "dynamic"
        return OnnxOptions(
            **BackendOptions.shared(target),
            provider=provider,
            graph_optimization=config.onnx_graph_optimization,
            int8_scheme=scheme,
            artifact_dir=target.cache_dir,
            form=f"step-graph-v{GRAPH_VERSION}",
        )

    def __init__(self, bundle: ModelBundle, options: OnnxOptions) -> None:
        super().__init__(bundle, options)
        if bundle.config.num_experts:
            # The step graph would trace the experts a sample batch happens to pick (the
            # mixture's Python loop), not routing: refused before any export is attempted.
            raise BackendConfigError(
                f"backend {self.name} does not support mixture-of-experts models yet; "
                "use --backend torch"
            )
        import onnxruntime as ort

        if options.quantization not in ("none", "int8"):
            raise BackendConfigError(
                f"backend {self.name} has no quantization mode {options.quantization!r}"
            )
        if options.dtype != "float32":
            raise BackendConfigError(
                f"backend {self.name} runs float32 activations and KV (use --quantization int8 "
                "for INT8 weights); got --dtype " + options.dtype
            )
        if options.graph_optimization not in _OPT_LEVELS:
            raise BackendConfigError(f"graph optimization must be one of {_OPT_LEVELS}")
        provider = self.provider = options.provider
        ep = _require_provider(provider)
        int8 = options.quantization == "int8"
        self.int8_scheme = options.int8_scheme if int8 else "none"
        graph = GraphOptions(
            quantization=options.quantization,
            int8_scheme=options.int8_scheme if int8 else "dynamic",
            int8_lm_head=options.int8_lm_head,
            max_positions=options.max_model_len,
            # CUDA's GroupQueryAttention takes fp16/bf16 only: the float32 graph on a GPU
            # keeps attention as plain ops.
            fused_attention=provider == "cpu",
        )
        model_path = build_model_file(bundle, graph, options.artifact_dir)
        self.session = self._session(ort, model_path, ep, options)
        self._torch_single_thread = provider == "cpu"
        self.activate()
        self.device = torch.device("cuda", self._device_id()) if provider != "cpu" else None
        self.torch_device = self.device or torch.device("cpu")
        self.pool = torch.zeros(0)

    def _device_id(self) -> int:
        dev = self.options.device
        return int(dev.split(":", 1)[1]) if ":" in dev else 0

    def _session(self, ort: Any, model_path: Path, ep: str, options: OnnxOptions) -> Any:
        so = ort.SessionOptions()
        level = options.graph_optimization
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        if options.num_threads:
            so.intra_op_num_threads = options.num_threads
        providers: list[Any] = [ep]
        if ep == "CPUExecutionProvider":
            # The optimized graph is cached beside the model, per machine and level: it may
            # hold kernels laid out for this CPU, so it is not shared across machines.
            machine = f"{platform.machine()}-{cpu_id()}"
            optimized = model_path.with_name(f"optimized-{level}-{machine}.onnx")
            if optimized.is_file():
                model_path = optimized
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            elif level != "disable":
                so.optimized_model_filepath = str(optimized)
        elif ep == "CUDAExecutionProvider":
            providers = [(ep, {"device_id": self._device_id()}), "CPUExecutionProvider"]
        else:  # TensorRT: verified only on a GPU machine (README); engines cached on disk
            providers = [
                (
                    ep,
                    {
                        "device_id": self._device_id(),
                        "trt_int8_enable": options.quantization == "int8",
                        "trt_fp16_enable": True,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(model_path.parent / "trt-engines"),
                        "trt_timing_cache_enable": True,
                    },
                ),
                ("CUDAExecutionProvider", {"device_id": self._device_id()}),
                "CPUExecutionProvider",
            ]
        log.info("ONNX Runtime session on %s from %s", ep, model_path)
        optimizing = so.optimized_model_filepath  # first load here: ORT optimizes and saves
        step = Progress("optimizing the ONNX graph for this CPU", one_time=True)
        with step if optimizing else contextlib.nullcontext():
            return ort.InferenceSession(str(model_path), so, providers=providers)

    # -- KV pool ----------------------------------------------------------------------------

    def activate(self) -> None:
        if self._torch_single_thread:
            # ORT's threads spin between calls and so do torch's OpenMP threads: on a small
            # CPU each pool then waits out the other's spinning (measured on 2 cores: the
            # first torch op after a step took 3.5 ms, single-stream decode 56 -> 119 tok/s
            # once torch ran on one thread). The torch glue here is a few small copies.
            torch.set_num_threads(1)

    def kv_bytes_per_block(self, block_size: int) -> int:
        return self.bundle.config.kv_bytes_per_token(4) * block_size

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        if block_size != GRAPH_BLOCK_SIZE:
            raise BackendConfigError(
                f"backend {self.name} runs {GRAPH_BLOCK_SIZE}-token KV blocks (its step graph "
                f"is built for them), not --block-size {block_size}; leave --block-size at "
                f"{GRAPH_BLOCK_SIZE} or use --backend torch"
            )
        cfg = self.bundle.config
        self.pool = torch.zeros(0)  # release the old pool before taking the new one
        self.pool = kv_pool_tensor(
            (
                cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * num_blocks,
                block_size,
                cfg.head_dim,
            ),
            torch.float32,
            self.torch_device,
        )
        self.num_blocks, self.block_size = num_blocks, block_size

    def available_memory(self) -> int | None:
        if self.device is not None and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free)
        return None

    # -- one step ---------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, inputs: BatchInputs) -> torch.Tensor:
        """Decodes run as one call (Q = 1), each prefill chunk as its own (B = 1)."""
        qsl = inputs.query_start_loc
        q_lens = np.diff(qsl)
        vocab = self.bundle.config.vocab_size
        logits = torch.empty((len(inputs.logits_indices), vocab), dtype=torch.float32)
        decodes = np.nonzero(q_lens == 1)[0]
        groups = [(decodes, qsl[decodes])] if decodes.size else []  # (sequences, flat rows)
        groups += [
            (np.array([i]), np.arange(qsl[i], qsl[i + 1])) for i in np.nonzero(q_lens != 1)[0]
        ]
        for seqs, rows in groups:
            wanted = np.isin(inputs.logits_indices, rows)
            local = np.searchsorted(rows, inputs.logits_indices[wanted])
            out = self._run(inputs, seqs, rows, local, q_lens)
            logits[torch.from_numpy(wanted)] = out
        return logits

    def _run(
        self,
        inputs: BatchInputs,
        seqs: np.ndarray,
        rows: np.ndarray,
        local_rows: np.ndarray,
        q_lens: np.ndarray,
    ) -> torch.Tensor:
        cfg, bs = self.bundle.config, self.block_size
        past = inputs.context_lens[seqs] - q_lens[seqs]
        nb = max(1, int(-(-past.max() // bs)))  # at least one block: no zero-size gather
        feeds = {
            "token_ids": inputs.token_ids[rows],
            "positions": inputs.positions[rows],
            "past_lens": past.astype(np.int64),
            "block_tables": np.ascontiguousarray(inputs.block_tables[seqs, :nb]),
            "logits_indices": local_rows.astype(np.int64),
        }
        if inputs.block_tables.shape[1] < nb:  # a table narrower than the padding we need
            feeds["block_tables"] = np.pad(
                feeds["block_tables"], ((0, 0), (0, nb - feeds["block_tables"].shape[1]))
            )
        n = len(rows)
        layers2 = 2 * cfg.num_hidden_layers
        # A buffer of at least one row: a prefill chunk that samples nothing still needs a
        # valid pointer for its [0, vocab] output.
        buffer = torch.empty((max(1, len(local_rows)), cfg.vocab_size), device=self.torch_device)
        logits = buffer[: len(local_rows)]
        new_kv = torch.empty(
            (layers2, n, cfg.num_key_value_heads, cfg.head_dim), device=self.torch_device
        )
        binding = self.session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr, dtype=np.int64))
        self._bind(binding.bind_input, "kv_pool", self.pool)
        self._bind(binding.bind_output, "logits", logits)
        self._bind(binding.bind_output, "new_kv", new_kv)
        self.session.run_with_iobinding(binding)
        slots = torch.from_numpy(inputs.slot_mapping[rows]).to(self.torch_device)
        pool = self.pool.view(layers2, cfg.num_key_value_heads, -1, cfg.head_dim)
        pool.index_copy_(2, slots, new_kv.transpose(1, 2))  # this step's K/V, in place
        return logits.cpu()

    def _bind(self, bind: Any, name: str, t: torch.Tensor) -> None:
        kind = "cuda" if t.device.type == "cuda" else "cpu"
        index = t.device.index or 0
        ptr = t.data_ptr() or t.untyped_storage().data_ptr()  # empty views keep their storage
        bind(name, kind, index, np.float32, list(t.shape), ptr)


@register_backend("tensorrt")
class TensorRTBackend(OnnxBackend):
    """The same step graph built into TensorRT engines by ONNX Runtime's TensorRT provider
    (INT8 from the calibrated QDQ graph). Verified only on a GPU machine with TensorRT."""

    forced_provider = "tensorrt"
