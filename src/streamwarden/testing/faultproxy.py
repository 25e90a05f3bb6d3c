"""A small TCP fault proxy for tests and ``streamwarden chaos``: what a bad network does, on loopback.

Put it between the engine and a test RTSP server (RTSP over TCP interleaved, so media and control
share the one connection the proxy sees) and change its behaviour at runtime:

- ``reset()``: every open connection is aborted with RST (SO_LINGER 0) on both sides;
- ``blackhole(True)``: connections stay open, nothing is forwarded (bytes are read and dropped, as a
  network that loses every packet; new connections are accepted and go nowhere);
- ``set_latency(seconds, jitter)``: each chunk is delayed by ``seconds`` +- ``jitter`` (uniform,
  order kept, as TCP does);
- ``set_bandwidth(bytes_per_second)``: a per-connection, per-direction rate limit;
- ``set_slow_close(seconds)``: a peer's close (FIN) reaches the other side only after ``seconds``;
- ``half_close(direction)``: FIN in one direction only; the other keeps flowing;
- ``refuse(True)``: new connections are reset at once (a closed port, seen after accept);
- ``set_upstream(host, port)``: new connections go elsewhere (e.g. to a ``FakeRtspServer``).

Why our own: toxiproxy (the usual tool) is a Go server that is not packaged for Debian 12, and
its PyPI clients only drive that server; the kernel here has no netem qdisc. No maintained
Python library does this, so this one stays small and is tested mode by mode
(tests/integration/test_faultproxy.py).

Bounded by construction: loopback only, ``max_connections`` (more are reset), per-direction queues
of ``QUEUE_CHUNKS`` chunks (a slow writer pushes back on the reader, as TCP would), every task
cancelled at ``stop()``. The proxy runs an asyncio loop on a thread of its own; every public
method is thread-safe and returns once the loop has applied it.

It also counts video frames it forwards from server to client: interleaved RTP (``$`` framing)
on even channels, one frame per RTP packet with the marker bit (one per access unit for H.264/H.265
as rtph264pay/rtph265pay send them). ``stats().frames_forwarded`` is what the engine was given on
its newest connection; frames written to an older one after the client reconnected (its old
attempt still being torn down, e.g. a frozen server's catch-up burst) are ``frames_stale``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from streamwarden.testing.loopserver import LoopbackServer

__all__ = ["Direction", "FaultProxy", "ProxyStats", "RtpFrameCounter", "proxied_url"]

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 64 * 1024
QUEUE_CHUNKS = 256
CONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 10.0


class Direction(StrEnum):
    UPSTREAM = "upstream"  # client (engine) -> server (camera)
    DOWNSTREAM = "downstream"  # server -> client
    BOTH = "both"


@dataclass
class ProxyStats:
    accepted: int = 0
    active: int = 0
    refused: int = 0  # reset at accept: refuse mode, over the limit, or upstream unreachable
    resets: int = 0  # connections aborted by reset()
    upstream_failures: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_dropped: int = 0  # read and thrown away by a blackhole or half-close
    frames_forwarded: int = 0  # on the newest connection: what the client's current attempt got
    frames_stale: int = 0  # written to an older connection after a newer one was accepted
    frames_dropped: int = 0


class RtpFrameCounter:
    """Counts RTP packets with the marker bit on even interleaved channels of an RTSP byte stream.

    Fed the server-to-client bytes in order, in chunks of any size. RTSP responses (text with an
    optional Content-Length body) between the interleaved packets are skipped.
    """

    _MAX_HEADER = 64 * 1024

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.packets = 0
        self.desynced = False  # set if the stream stopped looking like RTSP (garbage): counting stops

    def feed(self, data: bytes) -> int:
        """Returns the frames completed by ``data``."""
        if self.desynced:
            return 0
        self._buf += data
        frames = 0
        buf = self._buf
        pos = 0
        while pos < len(buf):
            if buf[pos] == 0x24:  # '$' channel(1) length(2) payload
                if len(buf) - pos < 4:
                    break
                channel = buf[pos + 1]
                (length,) = struct.unpack_from("!H", buf, pos + 2)
                if len(buf) - pos < 4 + length:
                    break
                if channel % 2 == 0 and length >= 12:
                    self.packets += 1
                    if buf[pos + 4 + 1] & 0x80:
                        frames += 1
                pos += 4 + length
                continue
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(buf) - pos > self._MAX_HEADER:
                    self.desynced = True
                break
            header = bytes(buf[pos:end]).decode("latin-1")
            if not header.startswith(("RTSP/", "GET_PARAMETER", "SET_PARAMETER", "OPTIONS", "ANNOUNCE")):
                self.desynced = True
                break
            body = 0
            for line in header.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    body = int(value.strip())
            if len(buf) - (end + 4) < body:
                break
            pos = end + 4 + body
        del buf[:pos]
        self.frames += frames
        return frames


@dataclass
class _Settings:
    blackhole: set[Direction] = field(default_factory=set)
    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: float | None = None  # bytes per second, per connection and direction
    slow_close: float = 0.0
    refuse: bool = False


class _Connection:
    def __init__(
        self, proxy: FaultProxy, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client_r = client_r
        self.client_w = client_w
        self.server_r: asyncio.StreamReader | None = None
        self.server_w: asyncio.StreamWriter | None = None
        self.half_closed: set[Direction] = set()
        self.counter = RtpFrameCounter()
        self.tasks: list[asyncio.Task[None]] = []
        self.aborted = False

    def writer_for(self, direction: Direction) -> asyncio.StreamWriter | None:
        return self.server_w if direction == Direction.UPSTREAM else self.client_w

    def abort(self) -> None:
        """RST both sides: SO_LINGER 0, then close."""
        self.aborted = True
        for writer in (self.client_w, self.server_w):
            if writer is None:
                continue
            _linger_zero(writer)
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


def _linger_zero(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultProxy(LoopbackServer["_Connection"]):
    """One listening port forwarding to one upstream, with faults switched on and off at runtime."""

    kind = "fault proxy"
    stream_limit = CHUNK

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 32,
        seed: int | None = None,
        name: str = "faultproxy",
    ) -> None:
        super().__init__(upstream, host=host, port=port, name=name)
        self.max_connections = max_connections
        self._settings = _Settings()
        self._rng = random.Random(seed)
        self._stats = ProxyStats()
        self._newest: _Connection | None = None

    def _drop(self, connection: _Connection) -> None:
        connection.abort()  # RST: a proxy that goes away looks like a network that did

    # -- control (any thread) ------------------------------------------------------------------
    @property
    def upstream(self) -> tuple[str, int]:
        return self._upstream

    def url(self, url: str) -> str:
        """``url`` (an rtsp:// URL of the upstream) with host:port replaced by the proxy's."""
        return proxied_url(url, self._host, self.port)

    def stats(self) -> ProxyStats:
        return self._call(lambda: ProxyStats(**{**self._stats.__dict__, "active": len(self._connections)}))

    def reset(self) -> int:
        """RST every open connection (both sides); returns how many."""

        def _reset() -> int:
            conns = list(self._connections)
            for conn in conns:
                conn.abort()
            self._stats.resets += len(conns)
            return len(conns)

        return self._call(_reset)

    def blackhole(self, on: bool = True, direction: Direction = Direction.BOTH) -> None:
        def _set() -> None:
            directions = (
                {Direction.UPSTREAM, Direction.DOWNSTREAM} if direction == Direction.BOTH else {direction}
            )
            if on:
                self._settings.blackhole |= directions
            else:
                self._settings.blackhole -= directions

        self._call(_set)

    def set_latency(self, seconds: float, jitter: float = 0.0) -> None:
        if seconds < 0 or jitter < 0 or jitter > seconds:
            raise ValueError("need 0 <= jitter <= seconds")
        self._call(lambda: self._apply(latency=seconds, jitter=jitter))

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bandwidth must be positive (None: unlimited)")
        self._call(lambda: self._apply(bandwidth=bytes_per_second))

    def set_slow_close(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("slow close delay must be >= 0")
        self._call(lambda: self._apply(slow_close=seconds))

    def refuse(self, on: bool = True) -> None:
        self._call(lambda: self._apply(refuse=on))

    def set_upstream(self, host: str, port: int) -> None:
        """New connections go to ``host:port``; open ones are left alone (``reset()`` them)."""
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"loopback only, got {host!r}")

        def _set() -> None:
            self._upstream = (host, port)

        self._call(_set)

    def half_close(self, direction: Direction) -> int:
        """Send FIN in ``direction`` on every open connection and stop forwarding that way."""
        if direction == Direction.BOTH:
            raise ValueError("half_close takes one direction")

        def _half() -> int:
            count = 0
            for conn in list(self._connections):
                writer = conn.writer_for(direction)
                if writer is None or direction in conn.half_closed:
                    continue
                conn.half_closed.add(direction)
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                count += 1
            return count

        return self._call(_half)

    def clear(self) -> None:
        """Every fault off (open connections keep whatever state faults left them in)."""
        self._call(lambda: setattr(self, "_settings", _Settings()))

    def _apply(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self._settings, key, value)

    def _call(self, func: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None or not self._ready.is_set() or loop.is_closed():
            raise RuntimeError("fault proxy is not running")

        async def _run() -> T:
            return func()

        return asyncio.run_coroutine_threadsafe(_run(), loop).result(CALL_TIMEOUT)

    # -- data path (proxy loop) ----------------------------------------------------------------
    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._stats.accepted += 1
        conn = _Connection(self, client_r, client_w)
        if self._settings.refuse or len(self._connections) >= self.max_connections:
            self._stats.refused += 1
            conn.abort()
            return
        self._connections.add(conn)
        self._newest = conn
        try:
            host, port = self._upstream
            try:
                conn.server_r, conn.server_w = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=CHUNK), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                self._stats.upstream_failures += 1
                self._stats.refused += 1
                conn.abort()
                return
            if conn.aborted:  # reset() while connecting
                conn.abort()
                return
            up = asyncio.create_task(self._pump(conn, Direction.UPSTREAM))
            down = asyncio.create_task(self._pump(conn, Direction.DOWNSTREAM))
            conn.tasks = [up, down]
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._connections.discard(conn)
            for writer in (conn.client_w, conn.server_w):
                if writer is None:
                    continue
                if conn.aborted:
                    writer.transport.abort()
                else:
                    writer.close()

    async def _pump(self, conn: _Connection, direction: Direction) -> None:
        """Reader side of one direction: read, drop or queue; a writer task delivers in order."""
        reader = conn.client_r if direction == Direction.UPSTREAM else conn.server_r
        writer = conn.server_w if direction == Direction.UPSTREAM else conn.client_w
        assert reader is not None and writer is not None
        queue: asyncio.Queue[tuple[float, bytes, int] | None] = asyncio.Queue(QUEUE_CHUNKS)
        deliver = asyncio.create_task(self._deliver(conn, direction, writer, queue))
        last_due = 0.0
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                frames = conn.counter.feed(data) if direction == Direction.DOWNSTREAM else 0
                if direction in self._settings.blackhole or direction in conn.half_closed:
                    self._stats.bytes_dropped += len(data)
                    self._stats.frames_dropped += frames
                    continue
                settings = self._settings
                delay = settings.latency
                if settings.jitter:
                    delay += self._rng.uniform(-settings.jitter, settings.jitter)
                due = max(time.monotonic() + delay, last_due)  # order kept, as TCP does
                last_due = due
                await queue.put((due, data, frames))
            await queue.put(None)  # EOF after what is queued
            await deliver
        finally:
            deliver.cancel()

    async def _deliver(
        self,
        conn: _Connection,
        direction: Direction,
        writer: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[float, bytes, int] | None],
    ) -> None:
        while True:
            item = await queue.get()
            if item is None:
                break
            due, data, frames = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if direction in self._settings.blackhole or direction in conn.half_closed:
                self._stats.bytes_dropped += len(data)
                self._stats.frames_dropped += frames
                continue
            ok = await self._write(writer, data)
            if not ok:
                return
            if direction == Direction.UPSTREAM:
                self._stats.bytes_up += len(data)
            else:
                self._stats.bytes_down += len(data)
                if conn is self._newest:
                    self._stats.frames_forwarded += frames
                else:  # a client that reconnected has given up on this one (it is being torn down)
                    self._stats.frames_stale += frames
        # The reader saw EOF: pass the close on (late, with slow close), unless already half-closed.
        # A blackhole swallows the FIN too: it is passed on only once the blackhole is lifted.
        while direction in self._settings.blackhole:
            await asyncio.sleep(0.05)
        if self._settings.slow_close:
            await asyncio.sleep(self._settings.slow_close)
        if direction not in conn.half_closed:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
        # Closing one side ends the connection: cancel the other direction's reader.
        for task in conn.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        """Writes ``data`` at the configured rate; False when the peer is gone."""
        try:
            bandwidth = self._settings.bandwidth
            if bandwidth is None:
                writer.write(data)
                await writer.drain()
                return True
            # Slices of ~20 ms each keep the rate smooth at any bandwidth.
            step = max(1, int(bandwidth / 50))
            for offset in range(0, len(data), step):
                piece = data[offset : offset + step]
                started = time.monotonic()
                writer.write(piece)
                await writer.drain()
                rest = len(piece) / bandwidth - (time.monotonic() - started)
                if rest > 0:
                    await asyncio.sleep(rest)
                bandwidth = self._settings.bandwidth or bandwidth
            return True
        except (ConnectionError, OSError, RuntimeError):
            return False


def proxied_url(url: str, host: str, port: int) -> str:
    """``rtsp://user:pw@camhost:camport/path`` -> ``rtsp://user:pw@host:port/path``."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))
