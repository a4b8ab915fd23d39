"""Process-wide log set-up of the `tessera` command: plain text or one JSON object per line.

JSON lines carry the record's ``extra`` fields (``request_id``, ``route``, ...) as keys,
so a log store can join the gateway's, the engine's and the RAG sidecar's lines of one
request on ``request_id``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Literal

from engine.progress import show_progress

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# The packages whose loggers follow --log-level (engine.progress logs as tessera.progress).
OWN_LOGGERS = ("tessera", "engine", "gateway", "services")


class OwnRecordsOrWarnings(logging.Filter):
    """Passes Tessera's records and other libraries' from WARNING up, so that INFO shows
    start-up and access lines without httpx's line per request or ONNX Runtime's per node."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in OWN_LOGGERS


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, service, extras, exc."""

    structured = True  # engine.progress writes no bar lines into such a log

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.service:
            entry["service"] = self.service
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: LogFormat, service: str | None = None) -> None:
    """Send records at ``level`` and above to stderr in ``fmt``: every logger's at DEBUG,
    else Tessera's and other libraries' WARNINGs and above."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    if logging.getLogger().level > logging.DEBUG:
        handler.addFilter(OwnRecordsOrWarnings())
    show_progress(level)
