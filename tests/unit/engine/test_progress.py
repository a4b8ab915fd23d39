"""Start-up progress (engine.progress): a bar on a terminal, plain records in logs, nothing
drawn into JSON logs, and quiet only when the log level asks for errors alone."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from engine.progress import Progress, show_progress
from tessera.log_format import JsonFormatter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def root_handler() -> Iterator[logging.StreamHandler[io.StringIO]]:
    """The root logger writing to one handler, as tessera's configure_logging leaves it."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler: logging.StreamHandler[io.StringIO] = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    show_progress("WARNING")
    yield handler
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_progress_draws_one_bar_line_on_a_terminal(
    root_handler: logging.StreamHandler[io.StringIO],
) -> None:
    terminal = Terminal()
    root_handler.setStream(terminal)
    with Progress("converting weights", total=4, one_time=True) as p:
        for _ in range(4):
            p.advance()
    out = terminal.getvalue()
    assert out.startswith("\r\033[K")
    assert "converting weights (one-time, cached afterwards) [" in out
    last = r"converting weights \(one-time, cached afterwards\): done in \d+\.\d s\n$"
    assert re.search(last, out)
    assert out.count("\n") == 1  # redrawn in place, one line in the end


def test_progress_writes_plain_records_when_the_log_is_no_terminal(
    root_handler: logging.StreamHandler[io.StringIO],
) -> None:
    with pytest.raises(RuntimeError), Progress("compiling kernels", one_time=True):
        raise RuntimeError("no compiler")
    lines = root_handler.stream.getvalue().splitlines()
    assert lines[0] == "INFO tessera.progress: compiling kernels (one-time, cached afterwards) ..."
    assert lines[1].startswith("INFO tessera.progress: compiling kernels (one-time, cached")
    assert "failed after" in lines[1]
    assert "\r" not in root_handler.stream.getvalue()


def test_json_logs_get_records_not_bars(root_handler: logging.StreamHandler[io.StringIO]) -> None:
    terminal = Terminal()
    root_handler.setStream(terminal)
    root_handler.setFormatter(JsonFormatter("serve"))
    with Progress("warming up"):
        pass
    out = terminal.getvalue()
    assert "\r" not in out
    assert '"logger": "tessera.progress"' in out and "done in" in out


def test_error_level_silences_progress(root_handler: logging.StreamHandler[io.StringIO]) -> None:
    show_progress("ERROR")
    with Progress("warming up"):
        pass
    assert root_handler.stream.getvalue() == ""
