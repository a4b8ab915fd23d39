"""The log set-up of the `tessera` command: INFO by default, Tessera's own records at the
chosen level, other libraries' chatter only from WARNING up (everything at DEBUG)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tessera.cli import build_parser
from tessera.log_format import configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Undo configure_logging's process-wide changes after the test."""
    root, progress = logging.getLogger(), logging.getLogger("tessera.progress")
    saved = root.handlers[:], root.level, progress.level
    yield
    root.handlers[:], _, _ = saved
    root.setLevel(saved[1])
    progress.setLevel(saved[2])


def emit_samples() -> None:
    logging.getLogger("gateway.rest").info("chat 200")
    logging.getLogger("engine.service.server").info("engine ready in 1.0s")
    logging.getLogger("gateway.core").debug("cache key computed")
    logging.getLogger("httpx").info("HTTP Request: GET http://rag/ready")
    logging.getLogger("httpx").debug("connect_tcp.started")
    logging.getLogger("onnxruntime.quantization").warning("slow quantizer")


def test_the_default_log_level_is_info(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESSERA_LOG_LEVEL", raising=False)
    assert build_parser().parse_args(["keys", "new", "x"]).log_level == "INFO"
    monkeypatch.setenv("TESSERA_LOG_LEVEL", "ERROR")
    assert build_parser().parse_args(["keys", "new", "x"]).log_level == "ERROR"


@pytest.mark.usefixtures("restored_logging")
def test_info_shows_tessera_records_and_only_warnings_of_other_libraries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "text")
    emit_samples()
    assert capsys.readouterr().err.splitlines() == [
        "INFO gateway.rest: chat 200",
        "INFO engine.service.server: engine ready in 1.0s",
        "WARNING onnxruntime.quantization: slow quantizer",
    ]


@pytest.mark.usefixtures("restored_logging")
def test_warning_hides_tessera_info_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "text")
    emit_samples()
    assert capsys.readouterr().err.splitlines() == [
        "WARNING onnxruntime.quantization: slow quantizer"
    ]


@pytest.mark.usefixtures("restored_logging")
def test_debug_shows_every_library(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", "text")
    emit_samples()
    lines = capsys.readouterr().err.splitlines()
    assert "DEBUG gateway.core: cache key computed" in lines
    assert "INFO httpx: HTTP Request: GET http://rag/ready" in lines
    assert "DEBUG httpx: connect_tcp.started" in lines
