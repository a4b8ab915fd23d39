"""Embedders compiled once per session (the ONNX artifacts are cached on disk besides)."""

from __future__ import annotations

import pytest

from services.rag.config import EmbedderConfig
from services.rag.embedder import Embedder, build_embedder


@pytest.fixture(scope="session")
def int8_embedder() -> Embedder:
    return build_embedder(EmbedderConfig(quantization="int8"))


@pytest.fixture(scope="session")
def float_embedder() -> Embedder:
    return build_embedder(EmbedderConfig(quantization="none"))
