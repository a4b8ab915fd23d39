"""Start-up failures are one line each, named with their fix, before any model is loaded, and
nothing is left half-written when the disk fills while converting or measuring."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.backend_choice import Measured, _Records
from engine.backends import BackendTarget, backend_class
from engine.config import BackendConfig
from engine.model_source import cache, load_model
from tessera.cli import main


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that gets as far as building an engine fails the test loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the start-up checks failed")

    monkeypatch.setattr("engine.llm_engine.LLMEngine.__init__", refuse)


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"tessera {command}: error: ")
    return err[0]


@pytest.mark.usefixtures("no_model_loading")
def test_serve_on_a_taken_port_says_which_flag_moves_it(
    taken_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--port", str(taken_port), "--no-rag", "--cache-dir", str(tmp_path)])
    assert code == 2
    line = _one_error_line(capsys, "serve")
    assert f"127.0.0.1:{taken_port}" in line and "--port" in line


@pytest.mark.usefixtures("no_model_loading")
def test_engine_on_a_taken_metrics_port_says_which_flag_moves_it(
    taken_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["engine", "--host", "127.0.0.1", "--port", "0", "--metrics-port", str(taken_port)]
    assert main([*args, "--cache-dir", str(tmp_path)]) == 2
    assert "--metrics-port" in _one_error_line(capsys, "engine")


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("command", ["serve", "prepare", "engine"])
def test_an_unusable_cache_directory_is_refused_at_start(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(not_a_dir / "cache"))
    ports = {"serve": ["--port", "0", "--grpc-port", "0", "--no-rag"], "engine": ["--port", "0",
             "--metrics-port", "0"], "prepare": ["--no-rag"]}[command]  # fmt: skip
    assert main([command, *ports]) == 2
    line = _one_error_line(capsys, command)
    assert str(not_a_dir / "cache") in line and "TESSERA_CACHE_DIR" in line


def test_a_full_disk_while_converting_leaves_no_partial_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_model("dummy:tiny")

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "save_file", disk_full)
    entry = tmp_path / "models" / "entry"
    assert not cache.store(entry, bundle.config, bundle.weights, bundle.tokenizer)
    assert list((tmp_path / "models").iterdir()) == []  # no temp dir, no entry


def test_a_full_disk_while_keeping_a_measurement_costs_only_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    records = _Records(tmp_path, load_model("dummy:tiny"))
    target = BackendTarget.resolve(BackendConfig(device="cpu"), 2048, tmp_path)
    options = backend_class("torch").options_from(target)
    real_write = Path.write_text

    def disk_full(self: Path, *args: object, **kwargs: object) -> int:
        if self.suffix == ".tmp":
            real_write(self, "{")  # the disk filled part-way through
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", disk_full)
    records.save(Measured("torch", "none", None, {1: 10.0}), options)
    assert list((tmp_path / "gates").iterdir()) == []
    assert records.load("torch", options) is None
    assert "could not keep the torch measurement" in caplog.text


def test_gateway_engines_take_commas_and_repeats() -> None:
    from gateway.config import GatewayConfig

    routing = GatewayConfig(
        routing={"engines": ["127.0.0.1:50061, 127.0.0.1:50062", "[::1]:50063"]}
    ).routing
    assert routing.engines == ["127.0.0.1:50061", "127.0.0.1:50062", "[::1]:50063"]


@pytest.mark.parametrize("bad", ["localhost", "127.0.0.1:", ":50061", "host:99999", "h:port"])
def test_a_malformed_engine_address_is_one_error_line(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gateway", "--engines", f"127.0.0.1:50061,{bad}", "--port", "0"]) == 2
    line = _one_error_line(capsys, "gateway")
    assert "--engines" in line and repr(bad) in line
