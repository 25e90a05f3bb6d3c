"""Log formats: the JSON lines carry the stream id as a field; both formats redact tracebacks."""

from __future__ import annotations

import json
import logging
import sys

from streamwarden.logs import JsonFormatter, RedactingFilter, RedactingFormatter


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("cannot open rtsp://admin:hunter2@10.0.0.5/live")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("streamwarden.stream", logging.WARNING, __file__, 1, message, args, exc_info)
    assert RedactingFilter().filter(made)
    return made


def test_json_line_lifts_the_stream_id_out_of_the_message() -> None:
    line = JsonFormatter().format(record("[cam-1] %s -> %s: %s", "PLAYING", "STALLED", "no frame"))
    entry = json.loads(line)
    assert entry["stream"] == "cam-1"
    assert entry["message"] == "PLAYING -> STALLED: no frame"
    assert entry["level"] == "WARNING" and entry["logger"] == "streamwarden.stream"
    assert entry["time"].endswith("+00:00")


def test_json_line_without_a_stream_has_a_null_stream() -> None:
    entry = json.loads(JsonFormatter().format(record("engine started with %d streams", 3)))
    assert entry["stream"] is None and entry["message"] == "engine started with 3 streams"


def test_both_formats_redact_messages_and_tracebacks() -> None:
    made = record("[cam1] url rtsp://admin:hunter2@10.0.0.5/live failed", exc=True)
    json_line = JsonFormatter().format(made)
    text = RedactingFormatter("%(message)s").format(made)
    for output in (json_line, text):
        assert "hunter2" not in output and "admin" not in output
        assert "rtsp://***@10.0.0.5/live" in output
    assert "ValueError" in json.loads(json_line)["exception"]
