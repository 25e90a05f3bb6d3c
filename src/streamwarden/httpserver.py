"""The API's HTTP server: uvicorn, bounded against clients that connect and never finish.

uvicorn 0.54 bounds a connection's idle time only *after* a response (``timeout_keep_alive``,
armed in ``on_response_complete`` and cancelled by any byte received). It has no timeout for
reading a request head: a client that connects and sends nothing, or trickles its headers a
byte at a time, holds its connection (and a file descriptor) for ever. ``limit_concurrency``
only answers 503 to *requests* once that many connections are open, so such clients would lock
everyone out and could still open more, until the process ran out of descriptors: the same
descriptors every recorder needs (see media/buswait.py). So the h11 protocol is subclassed
here to add a head deadline and a hard connection cap; uvicorn is pinned (pyproject.toml) and
tests/integration/test_httpserver.py checks both against the real server, so an upgrade that
changes what is overridden fails there. A body trickled slowly is bounded in the API itself
(``api.BODY_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "HEADER_TIMEOUT_SECONDS",
    "KEEP_ALIVE_SECONDS",
    "MAX_CONNECTIONS",
    "MAX_HEADER_BYTES",
    "server_config",
]

log = logging.getLogger(__name__)

KEEP_ALIVE_SECONDS = 5  # idle time allowed between requests on one connection
HEADER_TIMEOUT_SECONDS = 10.0  # from connecting (or the next request's first byte) to a full head
MAX_HEADER_BYTES = 16 * 1024  # request line and headers (a token and a long URL fit many times)
MAX_CONNECTIONS = 100  # open at once; requests get 503 at the limit, connections beyond are closed


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a hard cap on connections.

    Class attributes so ``server_config`` can make a variant with other limits (tests).
    """

    header_timeout: float = HEADER_TIMEOUT_SECONDS
    max_connections: int = MAX_CONNECTIONS
    _warned_at: ClassVar[float] = -60.0  # refusals are logged once a minute: a flood must not flood

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            now = time.monotonic()
            if now - GuardedH11Protocol._warned_at >= 60:
                GuardedH11Protocol._warned_at = now
                log.warning("API: %d connections open: closing new ones", self.max_connections)
            transport.close()
            return
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _watch_head(self) -> None:
        """Arm the deadline while a head is awaited (not re-armed by trickled bytes); drop it once
        a request is being served (uvicorn's keep-alive timer covers the idle time after it)."""
        if self.transport.is_closing() or not self._awaiting_head():
            self._cancel_deadline()
        elif self._head_deadline is None and self.timeout_keep_alive_task is None:
            self._head_deadline = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._awaiting_head() and not self.transport.is_closing():
            log.debug("API: no complete request within %.0f s: connection closed", self.header_timeout)
            self.transport.close()


def server_config(
    app: Any,
    host: str,
    port: int,
    *,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
    keep_alive: int = KEEP_ALIVE_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
    max_header_bytes: int = MAX_HEADER_BYTES,
    **options: Any,
) -> uvicorn.Config:
    """uvicorn settings for the API: h11 with the guards above, whatever else is installed."""
    protocol = type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,  # never "auto": httptools, if ever installed, would bypass the guards
        timeout_keep_alive=keep_alive,
        h11_max_incomplete_event_size=max_header_bytes,
        limit_concurrency=max_connections,
        **options,
    )
