"""A loopback-only asyncio TCP server on a thread of its own: the skeleton of the test doubles.

The fault proxy and the UDP relay both sit between the engine and a test RTSP server and must
be driven from synchronous test code while their sockets run; this owns that part (thread,
event loop, listener, orderly shutdown) so each double only says how to accept and how to drop
a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
from typing import Any, Generic, Self, TypeVar

ConnectionT = TypeVar("ConnectionT")


class LoopbackServer(Generic[ConnectionT]):
    """Subclasses implement ``_accept`` (a ``start_server`` callback) and ``_drop``."""

    kind = "loopback server"  # for error messages
    stream_limit = 2**16  # asyncio StreamReader buffer limit

    def __init__(self, upstream: tuple[str, int], *, host: str, port: int = 0, name: str) -> None:
        for address in (host, upstream[0]):
            if not ipaddress.ip_address(address).is_loopback:
                raise ValueError(f"the {self.kind} is for loopback only, got {address!r}")
        self._upstream = upstream
        self._host = host
        self._requested_port = port
        self._name = name
        self._connections: set[ConnectionT] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.port = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _drop(self, connection: ConnectionT) -> None:
        """End one connection at shutdown (close or abort, the double's choice)."""
        raise NotImplementedError

    # -- life cycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{self.kind} did not start in time")
        if self._start_error is not None:
            raise RuntimeError(f"{self.kind} could not listen: {self._start_error}")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, self._host, self._requested_port, limit=self.stream_limit)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as exc:
            self._start_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, cancel pending work; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def _shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for connection in list(self._connections):
                self._drop(connection)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_shutdown(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)  # pending call_later sends die with the loop
        thread.join(timeout)

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()
