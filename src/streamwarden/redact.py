"""Credential redaction for every string we show: logs, errors, API output, events.

Cameras are addressed as ``rtsp://user:password@host/...``; those URLs flow through
config errors, GStreamer debug strings and log lines. One function strips them so no
call site has to remember how.
"""

from __future__ import annotations

import re

REDACTED = "***"

# scheme://userinfo@ — userinfo runs to the last "@" before the path (passwords may hold "@").
# The scheme is bounded: an unbounded one made every search quadratic in the length of a run of
# letters (a 60 kB URL path held the GIL for 5 s, stalling every stream of the engine).
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,31}://)(?P<userinfo>[^/\s]+)@")
# key=value / key: value pairs whose key names a secret (GStreamer debug, query strings).
_SECRET_PAIR = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|user-pw|user_pw|token|secret|api[_-]?key)\b\s*[=:]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&)]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Replace the user:password of URLs and secret key=value pairs with ``***``."""

    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _SECRET_PAIR.sub(lambda m: f"{m.group('key')}{REDACTED}", text)
