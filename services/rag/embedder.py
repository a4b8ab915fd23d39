"""Sentence embedders: the interface the sidecar uses and the ONNX Runtime implementation."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from services.rag.compile import INPUT_NAMES, compiled_model
from services.rag.config import EmbedderConfig
from services.rag.model_files import ModelFiles, locate_model

# Texts per model call inside one embed(): keeps padding waste and peak memory bounded.
_MICRO_BATCH = 32


class Embedder(Protocol):
    """Turns texts into unit-length vectors; also tells the chunker where tokens are."""

    @property
    def model_name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_seq_length(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dimension] float32, L2-normalised; inputs past max_seq_length truncated."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text occupies in the model (after truncation, with special tokens)."""
        ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of every token of ``text`` (no special tokens, no truncation)."""
        ...


class OnnxEmbedder:
    """A compiled sentence encoder (float32 or INT8) on ONNX Runtime's CPU provider."""

    def __init__(
        self, files: ModelFiles, model_path: os.PathLike[str], config: EmbedderConfig
    ) -> None:
        import onnxruntime as ort

        self.files = files
        self.model_path = model_path
        self._dimension = files.hidden_size()
        self._max_seq_length = config.max_seq_length
        self._tokenizer = Tokenizer.from_file(str(files.tokenizer))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(config.max_seq_length)
        self._spans = Tokenizer.from_file(str(files.tokenizer))
        self._spans.no_padding()
        self._spans.no_truncation()
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.num_threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )

    @classmethod
    def from_config(cls, config: EmbedderConfig) -> OnnxEmbedder:
        """Locate the model, compile it (cached) at the configured precision, open a session."""
        files = locate_model(config.model_dir)
        path = compiled_model(files, config.quantization, config.int8_scheme, config.cache_dir)
        return cls(files, path, config)

    @property
    def model_name(self) -> str:
        return self.files.name

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        # Similar lengths share a micro-batch so little compute goes to padding.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), _MICRO_BATCH):
            rows = order[start : start + _MICRO_BATCH]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)  # [batch, tokens]
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n] = encodings[i].ids
                mask[r, :n] = 1
            feed = dict(zip(INPUT_NAMES, (ids, mask, np.zeros_like(ids)), strict=True))
            out[rows] = self._session.run(["embedding"], feed)[0]
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return list(self._spans.encode(text, add_special_tokens=False).offsets)


EMBEDDERS: dict[str, Callable[[EmbedderConfig], Embedder]] = {"onnx": OnnxEmbedder.from_config}


def build_embedder(config: EmbedderConfig) -> Embedder:
    """The embedder the configuration names (see EMBEDDERS)."""
    return EMBEDDERS[config.name](config)
