"""Logging set-up: every record passes through redaction, repeated lines are aggregated.

Redaction sits in a logging.Filter on the handler, so even a third-party or GStreamer
message that carries a camera URL with credentials is cleaned before it is written.
A dead camera retried every second must not flood the log (MediaMTX #6160: 17.5 GB):
identical messages within an interval are collapsed into one line with a count.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from streamwarden.redact import redact


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


def setup_logging(level: str = "INFO", path: Path | None = None) -> None:
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
