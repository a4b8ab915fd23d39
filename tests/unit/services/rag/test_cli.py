"""`tessera rag`: flags generated from RagConfig, environment variables, clear bad-flag errors."""

from __future__ import annotations

import argparse

import pytest

from services.rag.config import RagConfig
from tessera.cli_args import settings_overrides
from tessera.commands import rag


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rag.register(parser.add_subparsers())
    return parser.parse_args(["rag", *argv])


def test_flags_reach_the_settings_groups():
    args = parse("--port", "9002", "--chunk-size", "64", "--quantization", "none",
                 "--approximate-threshold", "10", "--redis-url", "redis://r:6379/1")  # fmt: skip
    config = RagConfig(**settings_overrides(args))
    assert config.server.port == 9002 and config.chunking.chunk_size == 64
    assert config.embedder.quantization == "none" and config.index.approximate_threshold == 10
    assert config.cache.redis_url == "redis://r:6379/1"


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    config = RagConfig()
    assert (config.server.port, config.embedder.quantization, config.cache.redis_url) == (
        8002,
        "int8",
        None,
    )
    monkeypatch.setenv("TESSERA_RAG_CHUNKING__CHUNK_SIZE", "200")
    monkeypatch.setenv("REDIS_URL", "redis://env:6379/0")
    config = RagConfig()
    assert config.chunking.chunk_size == 200 and config.cache.redis_url == "redis://env:6379/0"


def test_bad_flag_value_is_one_clear_line(capsys: pytest.CaptureFixture[str]):
    args = parse("--chunk-size", "64", "--chunk-overlap", "64")
    assert rag.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("tessera rag: error: --chunk-overlap:") and "smaller" in err
