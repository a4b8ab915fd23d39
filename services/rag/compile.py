"""Compile the sentence encoder to ONNX (float32, then INT8), cached on disk.

The exported graph is the whole sentence-transformers pipeline after the
tokenizer: BERT encoder, mean pooling over real tokens, L2 normalisation, so a
session returns finished embeddings ``[batch, hidden]``. Artifacts are keyed by
the model's revision and the exporter's and quantizer's versions; a cache hit
imports neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.progress import Progress
from services.rag.model_files import ModelFiles
from services.rag.quantize import QUANTIZERS

log = logging.getLogger(__name__)

# Bump when the exported graph or a quantization pass changes meaning.
EXPORT_REVISION = "3"
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def default_cache_dir() -> Path:
    return Path("~/.cache/tessera/rag").expanduser()


def artifact_dir(files: ModelFiles, cache_dir: Path | None) -> Path:
    """The directory of this model's artifacts for the installed exporter versions."""
    versions = ":".join(
        f"{pkg}={importlib.metadata.version(pkg)}" for pkg in ("torch", "onnx", "onnxruntime")
    )
    key = hashlib.sha256(f"{files.revision}|{versions}|{EXPORT_REVISION}".encode()).hexdigest()
    return (cache_dir or default_cache_dir()).expanduser() / f"{files.name}-{key[:16]}"


def compiled_model(
    files: ModelFiles, quantization: str, int8_scheme: str, cache_dir: Path | None = None
) -> Path:
    """Path of the ONNX model for this precision, exporting/quantizing on a cache miss."""
    out_dir = artifact_dir(files, cache_dir)
    float_path = out_dir / "float32.onnx"
    if not float_path.is_file():
        with Progress(f"exporting the {files.name} embedder to ONNX", one_time=True):
            _atomic_write(float_path, lambda tmp: export_float(files, tmp))
    if quantization == "none":
        return float_path
    if int8_scheme not in QUANTIZERS:
        raise ValueError(f"unknown INT8 scheme {int8_scheme!r}; one of {sorted(QUANTIZERS)}")
    int8_path = out_dir / f"int8-{int8_scheme}.onnx"
    if not int8_path.is_file():
        quantize = QUANTIZERS[int8_scheme]
        with Progress(f"quantizing the {files.name} embedder to int8", one_time=True):
            _atomic_write(int8_path, lambda tmp: quantize(float_path, tmp))
    return int8_path


def export_float(files: ModelFiles, dst: Path) -> None:
    """torch.onnx.export of BertModel (local safetensors) + mean pooling + L2 norm."""
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bar: this step reports itself

    class SentenceEncoder(torch.nn.Module):
        """BERT → mean over attended tokens → unit length (sentence-transformers' pipeline)."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state  # [batch, tokens, hidden]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [batch, tokens, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [batch, hidden]
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    log.info("exporting %s to ONNX (once; cached in %s)", files.name, dst.parent)
    bert = BertModel.from_pretrained(str(files.directory), local_files_only=True)
    bert.eval()
    sample = torch.ones(2, 8, dtype=torch.long)
    dynamic: dict[str, Any] = {name: {0: "batch", 1: "tokens"} for name in INPUT_NAMES}
    dynamic["embedding"] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            SentenceEncoder(bert),
            (sample, sample, torch.zeros_like(sample)),
            str(dst),
            input_names=list(INPUT_NAMES),
            output_names=["embedding"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )


def _atomic_write(dst: Path, write: Callable[[Path], None]) -> None:
    """Run ``write`` into a temp file beside ``dst``, fsync it, then rename it into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
