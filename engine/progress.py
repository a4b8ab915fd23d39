"""Progress of the slow start-up steps, for whoever waits at the console.

GGUF conversion, the native kernel build, graph export, the accuracy gates, the speed
measurement of the automatic choice and the warm-up each take seconds to minutes on a CPU.
A step says what it does, that it is one-time where it is cached afterwards, how far it has
got, and how long it took. On a terminal (text logs to a TTY) it redraws one bar line in
place; anywhere else it writes plain records through the ``tessera.progress`` logger, at most
one every few seconds, so logs stay one record a line and JSON logs stay JSON.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import TextIO

log = logging.getLogger("tessera.progress")
_LOG_EVERY_S = 5.0  # between plain progress records
_REDRAW_EVERY_S = 0.2  # between bar redraws
_BAR_WIDTH = 24


def console_stream() -> TextIO | None:
    """The terminal that text logs go to, or None (logs to a file or a pipe, or JSON logs)."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if stream is None or getattr(handler.formatter, "structured", False):
            continue
        try:
            if stream.isatty():
                return stream
        except (AttributeError, ValueError):  # no isatty, or a closed stream: no terminal
            continue
    return None


class Progress:
    """One slow step: ``with Progress("converting GGUF weights", total=272, one_time=True) as p:
    ... p.advance()``. ``total`` None means the step cannot count its way (a compile)."""

    def __init__(self, what: str, total: int | None = None, *, one_time: bool = False) -> None:
        self.what = what + (" (one-time, cached afterwards)" if one_time else "")
        self.total = total
        self.done = 0
        self._start = self._last = 0.0
        self._stream: TextIO | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one writer at a time: the ticker and the caller
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self._start = self._last = time.perf_counter()
        self._stream = console_stream() if log.isEnabledFor(logging.INFO) else None
        if self._stream is not None:
            self._draw()
            if self.total is None:  # nothing counts up: keep the elapsed time moving
                self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
                self._ticker.start()
        else:
            log.info("%s ...", self.what)
        return self

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._draw()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.done += n
        now = time.perf_counter()
        if self._stream is not None:
            if now - self._last >= _REDRAW_EVERY_S:
                self._last = now
                self._draw()
        elif now - self._last >= _LOG_EVERY_S:
            self._last = now
            log.info("%s: %s, %.0f s", self.what, self._count(), now - self._start)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        seconds = time.perf_counter() - self._start
        outcome = f"done in {seconds:.1f} s" if kind is None else f"failed after {seconds:.1f} s"
        if self._stream is not None:
            self._draw(outcome, end="\n")
        else:
            log.info("%s: %s", self.what, outcome)

    def _count(self) -> str:
        return f"{self.done}/{self.total}" if self.total else f"{self.done}"

    def _draw(self, outcome: str | None = None, end: str = "") -> None:
        stream = self._stream
        assert stream is not None
        elapsed = time.perf_counter() - self._start
        if outcome is not None:
            line = f"{self.what}: {outcome}"
        elif self.total:
            filled = min(_BAR_WIDTH, _BAR_WIDTH * self.done // self.total)
            bar = "#" * filled + "." * (_BAR_WIDTH - filled)
            line = f"{self.what} [{bar}] {self._count()} {elapsed:.0f} s"
        else:
            line = f"{self.what} ... {elapsed:.0f} s"
        with self._lock:
            stream.write("\r\033[K" + line + end)
            stream.flush()


def show_progress(level: str) -> None:
    """Let progress records through at INFO while the rest of the log keeps ``level``, unless
    the level asks for errors only (then progress is quiet too)."""
    wanted = logging.getLevelName(level.upper())
    quiet = isinstance(wanted, int) and wanted > logging.WARNING
    log.setLevel(wanted if quiet else logging.INFO)
