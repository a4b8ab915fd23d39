"""Redis trouble is counted always, logged once per interval, and never raised into requests."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class RedisHealth:
    """Tracks Redis failures; the first failure of an interval logs, every failure counts."""

    def __init__(
        self, on_error: Callable[[], None] | None = None, log_interval: float = 30.0
    ) -> None:
        self.on_error = on_error
        self.log_interval = log_interval
        self.healthy = True
        self.failures = 0
        self._last_log = -1e9
        self._suppressed = 0

    def failed(self, operation: str, error: BaseException) -> None:
        self.failures += 1
        if self.on_error is not None:
            self.on_error()
        now = time.monotonic()
        if now - self._last_log >= self.log_interval:
            more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
            log.warning(
                "redis unavailable during %s: %s%s; degrading",
                operation,
                type(error).__name__,
                more,
            )
            self._last_log, self._suppressed = now, 0
        else:
            self._suppressed += 1
        self.healthy = False

    def succeeded(self) -> None:
        if not self.healthy:
            log.warning("redis is back")
        self.healthy = True
