"""Logging set-up: every record passes through redaction, repeated lines are aggregated.

Redaction sits in a logging.Filter on the handler, so even a third-party or GStreamer
message that carries a camera URL with credentials is cleaned before it is written; the
formatters redact tracebacks too, which the filter never sees.
A dead camera retried every second must not flood the log (MediaMTX #6160: 17.5 GB):
identical messages within an interval are collapsed into one line with a count.
Stream records start with ``[<stream id>]``; the JSON-lines format lifts that into a
``stream`` field, so a log pipeline can filter on it without parsing text.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from streamwarden.redact import redact

# "[cam1] ..." : the convention every stream-related record follows (see stream.py).
_STREAM_PREFIX = re.compile(r"^\[(?P<stream>[a-z0-9][a-z0-9_-]{0,63})\] ")


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        return True


class RepeatFilter(logging.Filter):
    """Lets the first of identical records through, then one summary per interval."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        first, suppressed = self._seen.get(key, (0.0, -1))
        if suppressed < 0 or now - first >= self.interval:
            if suppressed > 0:
                record.msg = f"{record.getMessage()} (repeated {suppressed} more times)"
                record.args = None
            self._seen[key] = (now, 0)
            if len(self._seen) > 10_000:
                self._seen.clear()
            return True
        self._seen[key] = (first, suppressed + 1)
        return False


class RedactingFormatter(logging.Formatter):
    """The human format; tracebacks (which may print a URL from a local variable) redacted."""

    def formatException(self, ei: object) -> str:  # noqa: N802 - logging's name
        return redact(super().formatException(ei))  # type: ignore[arg-type]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, stream (or null), message[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        stream = getattr(record, "stream", None)
        if stream is None:
            match = _STREAM_PREFIX.match(message)
            if match is not None:
                stream = match.group("stream")
                message = message[match.end() :]
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "stream": stream,
            "message": message,
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", path: Path | None = None, *, json_lines: bool = False) -> None:
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
