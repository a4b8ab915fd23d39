"""Engine settings: one pydantic-settings root composed of one model per concern.

Every leaf field is a CLI flag (``--max-num-seqs``; see tessera.cli_args) and an
environment variable (``TESSERA_SCHEDULER__MAX_NUM_SEQS``); flags win over the
environment, which wins over the defaults documented here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """Bytes from '512MiB', '2GiB', '1.5G', '1000000' (binary units for the 'i' forms)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (try 512MiB or 2GiB)")
    number, unit = float(m.group(1)), (m.group(2) or "").lower().rstrip("b")
    if unit.endswith("i"):
        return int(number * 1024 ** ("kmgt".index(unit[0]) + 1))
    return int(number * _UNITS[unit])


class ModelConfig(BaseModel):
    """Which weights to load and how long a sequence may be."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    path: str = Field(
        "",
        description="GGUF file, Hugging Face directory, a packaged model's name "
        "(gemma3-270m), or dummy:<preset|json>; empty means the bundled SmolLM2-135M-Instruct",
        json_schema_extra={"flag": "model"},
    )
    chat_template: Path | None = Field(
        None,
        description="Jinja chat template file used instead of the model's own (a base model "
        "without one serves chat completions only with this)",
    )
    cache_dir: Path | None = Field(
        None, description="where converted weights are cached (default ~/.cache/tessera)"
    )
    seed: int = Field(
        0,
        description="seed for dummy weights and unseeded sampling",
        json_schema_extra={"flag": "model_seed"},
    )
    max_model_len: int | None = Field(
        None, ge=16, description="context length cap (default: the model's own)"
    )

    @field_validator("chat_template")
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        if v is not None and not v.expanduser().is_file():
            raise ValueError(f"{v} is not a readable file")
        return v if v is None else v.expanduser()


class CacheConfig(BaseModel):
    """The paged KV cache."""

    model_config = ConfigDict(extra="forbid")

    block_size: int = Field(16, ge=1, le=256, description="tokens per KV block")
    kv_cache_memory: str = Field(
        "auto",
        description="KV pool size, e.g. 2GiB; auto = 90% of free GPU memory after warm-up, "
        "or a quarter of available RAM (at most 4GiB) on CPU",
    )
    enable_prefix_caching: bool = Field(True, description="reuse KV of shared prompt prefixes")

    @field_validator("kv_cache_memory")
    @classmethod
    def _size(cls, v: str) -> str:
        if v != "auto":
            parse_size(v)
        return v


class SchedulerConfig(BaseModel):
    """Continuous batching limits."""

    model_config = ConfigDict(extra="forbid")

    max_num_seqs: int = Field(64, ge=1, description="cap on sequences running in one step")
    max_num_batched_tokens: int = Field(
        512, ge=1, description="token budget per step (prefill chunks + decodes)"
    )
    max_waiting: int = Field(
        1024, ge=0, description="waiting-queue bound; beyond it requests are refused at once"
    )
    long_prefill_token_threshold: int = Field(
        0, ge=0, description="cap on one prefill chunk per step (0 = the whole budget)"
    )
    policy: Literal["fcfs", "priority"] = Field("fcfs", description="admission order")


class SpeculativeConfig(BaseModel):
    """Speculative decoding without a draft model (engine/spec_decode): guessed tokens are
    checked in the same batched step, and only tokens the model itself would produce are kept."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["off", "ngram", "suffix"] = Field(
        "off",
        description="ngram: continue a repeat of the request's own last tokens found earlier "
        "in its prompt or output (prompt lookup); suffix: that, or a continuation seen in "
        "recent outputs of all requests (a bounded suffix index); off",
        json_schema_extra={"flag": "speculative"},
    )
    num_speculative_tokens: int = Field(
        8,
        ge=1,
        le=16,
        description="most guessed tokens checked per sequence and step (fewer where the "
        "measured step cost and the guesses' record say more would not pay)",
    )
    prompt_lookup_min: int = Field(
        1,
        ge=1,
        description="shortest repeat of the last tokens that makes a guess (a guess after a "
        "lone recurring token is checked only where such guesses have been kept often enough "
        "to pay: on Gemma 3 270M rag 1.06x against 2, on SmolLM2 seldom)",
    )
    prompt_lookup_max: int = Field(
        5, ge=1, description="longest repeat of the last tokens looked for first"
    )
    disable_by_batch_size: int = Field(
        1,
        ge=0,
        description="no speculation in steps with more running sequences than this: measured "
        "on CPU (bench/speculative_ab.py), guessing paid at 1 sequence (1.2-1.4x), was even "
        "at 4 and lost on chat from 2 (0.95x); 0: never turned off",
        json_schema_extra={"flag": "speculative_disable_by_batch_size"},
    )
    guess_cost: float | None = Field(
        None,
        ge=0.0,
        description="what checking one more guessed token adds to a step, as a share of a "
        "plain decode step; unset: measured on the backend at start-up (0: every guess found "
        "is checked in full)",
        json_schema_extra={"flag": "speculative_guess_cost"},
    )
    suffix_max_tokens: int = Field(
        65536,
        ge=1024,
        description="tokens of recent outputs the suffix index holds (oldest dropped first)",
        json_schema_extra={"flag": "speculative_suffix_max_tokens"},
    )

    @model_validator(mode="after")
    def _lookup_range(self) -> SpeculativeConfig:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError("--prompt-lookup-min must not exceed --prompt-lookup-max")
        return self

    def summary(self, guess_cost: float | None = None) -> str:
        """What speculation runs, in one line for start-up banners; ``guess_cost``: what the
        engine found a guessed token to add to a step (its measured step-cost curve)."""
        if self.method == "off":
            return "speculative decoding: off"
        k = self.num_speculative_tokens
        source = f"prompt lookup {self.prompt_lookup_min}..{self.prompt_lookup_max}"
        if self.method == "suffix":
            source += f" and the last {self.suffix_max_tokens:,} output tokens"
        limit = self.disable_by_batch_size
        when = (
            f"off above {limit} running sequence{'s' if limit > 1 else ''}"
            if limit
            else "at every batch size"
        )
        cost = self.guess_cost if guess_cost is None else guess_cost
        priced = (
            ""
            if cost is None
            else f" (as many as pay: a guessed token adds {cost:.2f} of a step"
            + (", measured)" if self.guess_cost is None else ")")
        )
        return (
            f"speculative decoding: {self.method}, up to {k} token{'s' if k > 1 else ''}"
            f"{priced}, {source}, {when}"
        )


class BackendConfig(BaseModel):
    """Which backend runs the model, on what, at what precision."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["auto", "torch", "onnx", "tensorrt"] = Field(
        "auto",
        description="torch (PyTorch eager, the reference), onnx (ONNX Runtime), tensorrt (ONNX "
        "Runtime's TensorRT provider, GPU); auto = the fastest, timed on this machine, of the "
        "modes that pass the accuracy gates",
        json_schema_extra={"flag": "backend"},
    )
    quantization: Literal["auto", "none", "int8"] = Field(
        "auto",
        description="int8 (every backend has the mode; torch's multiplies by the GGUF's own "
        "4- and 8-bit weight blocks with int16 activations in Tessera's CPU kernel, "
        "engine/backends/README.md) or none; auto goes with --backend auto's choice (none for "
        "an explicit backend)",
    )
    onnx_provider: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto",
        description="ONNX Runtime execution provider; auto follows --device; a missing "
        "provider is an error, never a silent fall-back",
    )
    onnx_graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimization level"
    )
    int8_scheme: Literal["auto", "dynamic", "qdq"] = Field(
        "auto",
        description="ONNX INT8 form: dynamic (per-token activations, CPU) or qdq "
        "(static, calibrated, for TensorRT); auto = qdq on TensorRT, else dynamic",
    )
    device: str = Field("auto", description="cpu, cuda, cuda:N, or auto (cuda if present)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="activation/KV dtype; auto = float32 on CPU, bfloat16 on CUDA"
    )
    num_threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores)")
    weight_dtype: Literal["same", "bfloat16"] = Field(
        "same",
        description="matmul weight precision: same = --dtype; bfloat16 = bf16 weights with "
        "float32 activations, norms, attention and KV (CPU; faster, not bit-exact)",
    )
    native_kernels: bool = Field(
        True,
        description="compile Tessera's C++ CPU kernels on first use (paged decode attention, "
        "RMSNorm, SwiGLU, the int8 matmul of --backend torch --quantization int8); without "
        "them, PyTorch ops, and no torch int8 mode",
    )


class EngineConfig(BaseSettings):
    """Root of the engine's settings, shared by `tessera generate`, `engine` and `serve`."""

    model_config = SettingsConfigDict(
        env_prefix="TESSERA_", env_nested_delimiter="__", extra="forbid"
    )

    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    cache: CacheConfig = Field(default_factory=lambda: CacheConfig())
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig())
    backend: BackendConfig = Field(default_factory=lambda: BackendConfig())
    speculative: SpeculativeConfig = Field(default_factory=lambda: SpeculativeConfig())


class ServerConfig(BaseModel):
    """The engine pod's network side: gRPC, the HTTP metrics/health port, draining."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("0.0.0.0", description="address the gRPC and HTTP servers bind")
    port: int = Field(50061, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    metrics_port: int = Field(
        8001, ge=0, le=65535, description="HTTP port of /metrics, /health, /ready (0: free one)"
    )
    drain_timeout: float = Field(
        30.0, ge=0, description="seconds in-flight requests get to finish after SIGTERM"
    )
    retry_after: float = Field(
        1.0, gt=0, description="seconds a client is told to wait after RESOURCE_EXHAUSTED"
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest gRPC message accepted or sent"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: serve gRPC over TLS")
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        return self


class EnginePodConfig(EngineConfig):
    """Root of `tessera engine`: the engine's settings plus its server's."""

    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
