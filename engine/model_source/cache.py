"""On-disk cache of converted models: a GGUF, once dequantized, is kept as a Hugging Face
style directory (config.json, model.safetensors, tokenizer files) so later loads skip both the
dequantization and the transformers-based tokenizer conversion."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.model_source.arch import ArchConfig
from engine.model_source.tokenizer import Tokenizer

# Bump when the converted layout or the conversion itself changes: old entries stop matching.
CACHE_FORMAT_VERSION = 1

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$TESSERA_CACHE_DIR, else ~/.cache/tessera. Read at call time, never at import."""
    env = os.environ.get("TESSERA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tessera"


def unusable_cache_dir(cache_dir: Path) -> str | None:
    """Why ``cache_dir`` cannot hold converted models and measurements (it is a file, it
    cannot be created or written), or None when it can. Checked at start-up, before minutes
    of work that could not be kept."""
    probe = cache_dir / f".probe-{os.getpid()}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None


def entry_dir(cache_dir: Path, source: Path) -> Path:
    """Where the conversion of `source` lives: keyed by its resolved path, size and mtime,
    so an edited or replaced file never hits a stale entry."""
    st = source.stat()
    ident = f"{source.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{CACHE_FORMAT_VERSION}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:24]
    return cache_dir / "models" / key


def store(
    entry: Path, config: ArchConfig, weights: dict[str, torch.Tensor], tokenizer: Tokenizer
) -> bool:
    """Write a converted model to `entry` atomically (temp dir, then rename). Returns False,
    after logging why, when the cache cannot be written: the caller still has the model."""
    tmp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
        generation = {"bos_token_id": config.bos_token_id, "eos_token_id": tokenizer.eos_token_ids}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save(tmp)
        os.rename(tmp, entry)
        return True
    except OSError as e:
        if entry.is_dir():  # another process finished the same conversion first
            return True
        log.warning("could not write model cache %s: %s", entry, e)
        return False
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def discard(entry: Path) -> None:
    """Remove an unreadable entry so the next load converts afresh."""
    log.warning("discarding unreadable model cache entry %s", entry)
    shutil.rmtree(entry, ignore_errors=True)
