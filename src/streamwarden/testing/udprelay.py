"""An RTSP-aware UDP impairment relay for tests: packet loss, delay, jitter and duplicates on RTP.

``FaultProxy`` impairs a TCP byte stream, which is no model of a lossy network for RTP over UDP:
the kernel here has no netem qdisc, so loss and reordering must be made in user space. This relay
proxies the RTSP control connection (TCP, one upstream connection per client connection) and
rewrites the ``client_port=a-b`` of each SETUP so that the server sends RTP/RTCP to a pair of
relay UDP sockets instead; the server's reply gets the client's own ports back, so the client
never sees the relay's. Datagrams the server sends to the relay's RTP socket are forwarded to the
client's RTP port with the impairment set at runtime (``set_impairment``):

- ``drop``: probability of losing each RTP packet;
- ``delay`` ± ``jitter`` seconds (uniform, independent per packet, so packets reorder when the
  jitter exceeds the packet spacing);
- ``duplicate``: probability of sending a packet twice.

RTCP from the server (sender reports) is forwarded unimpaired, so loss figures come from RTP
alone. RTCP from the client goes straight to the server (``server_port`` is not rewritten): that
keeps the relay one-way and the server sees the client's real address, as it would without us.
Interleaved ``$`` frames (RTSP over TCP) pass through the control proxy untouched.

Seeded ``random.Random`` for reproducible runs. Bounded: loopback only, ``max_connections``
(more are closed at once), ``MAX_STREAMS_PER_CONNECTION`` relay pairs per connection,
``max_pending`` delayed packets (more are dropped and counted as ``overflow``), RTSP headers of
at most ``MAX_HEADER`` bytes (beyond that the connection is passed through unparsed). One asyncio
loop on a thread of its own; ``close()`` cancels every task and closes every socket.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import cast

from streamwarden.testing.faultproxy import proxied_url
from streamwarden.testing.loopserver import LoopbackServer

__all__ = ["Impairment", "RelayStats", "RtspSplitter", "UdpRelay"]

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_HEADER = 64 * 1024
MAX_STREAMS_PER_CONNECTION = 8
CONNECT_TIMEOUT = 5.0
_PAIR_ATTEMPTS = 32
_CLIENT_PORT = re.compile(r"client_port=(\d+)-(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Impairment:
    """What happens to each server-to-client RTP packet; the default forwards all at once."""

    drop: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.drop <= 1.0 and 0.0 <= self.duplicate <= 1.0):
            raise ValueError("drop and duplicate are probabilities in [0, 1]")
        if self.delay < 0 or self.jitter < 0 or self.jitter > self.delay:
            raise ValueError("need 0 <= jitter <= delay")


@dataclass(frozen=True)
class RelayStats:
    connections: int = 0  # control connections accepted
    active: int = 0
    refused: int = 0  # over max_connections, or upstream unreachable
    setups: int = 0  # SETUP transports rewritten to relay ports
    rtp_received: int = 0  # from the server, on relay RTP sockets
    rtp_forwarded: int = 0  # sent to the client (a duplicate counts twice)
    rtp_dropped: int = 0  # lost on purpose
    rtp_duplicated: int = 0
    rtcp_forwarded: int = 0
    overflow: int = 0  # dropped because max_pending delayed packets were queued


class RtspSplitter:
    """Splits an RTSP byte stream, fed in chunks of any size, into header blocks and the rest.

    ``feed`` returns pieces in order: ``str`` for each complete message header (without its
    closing blank line) and ``bytes`` for everything else, passed on unchanged: bodies (by
    Content-Length) and interleaved ``$`` frames. A stream that stops looking like RTSP (a
    header longer than ``MAX_HEADER``) is passed through as bytes from then on.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._body_left = 0
        self.passthrough = False

    def feed(self, data: bytes) -> list[bytes | str]:
        if self.passthrough:
            return [data]
        self._buf += data
        buf = self._buf
        pieces: list[bytes | str] = []
        pos = 0
        while pos < len(buf):
            if self._body_left:
                take = min(self._body_left, len(buf) - pos)
                pieces.append(bytes(buf[pos : pos + take]))
                pos += take
                self._body_left -= take
                continue
            if buf[pos] == 0x24:  # '$' channel(1) length(2) payload
                if len(buf) - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buf, pos + 2)
                self._body_left = 4 + length  # copied through by the branch above
                continue
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_HEADER:
                    self.passthrough = True
                    pieces.append(bytes(buf[pos:]))
                    pos = len(buf)
                break
            header = bytes(buf[pos:end]).decode("latin-1")
            pieces.append(header)
            self._body_left = _content_length(header)
            pos = end + 4
        del buf[:pos]
        return pieces


def _content_length(header: str) -> int:
    for line in header.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            return int(value.strip())
    return 0


class _Forwarder(asyncio.DatagramProtocol):
    """One relay UDP socket: what the server sends here goes to the client's ``target`` port."""

    def __init__(self, relay: UdpRelay, target: tuple[str, int], rtp: bool) -> None:
        self.relay = relay
        self.target = target
        self.rtp = rtp
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes | int, ...]) -> None:
        if self.transport is not None:
            self.relay._forward(self, data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that is gone: nothing to do but keep relaying.
        log.debug("relay socket error: %s", exc)


class _Connection:
    def __init__(self, peer_host: str) -> None:
        self.peer_host = peer_host
        self.to_client: dict[tuple[int, int], tuple[int, int]] = {}  # relay ports -> client ports
        self.forwarders: list[_Forwarder] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []

    def close(self) -> None:
        for forwarder in self.forwarders:
            if forwarder.transport is not None:
                forwarder.transport.close()
                forwarder.transport = None
        for writer in self.writers:
            writer.close()
        for task in self.tasks:
            task.cancel()


class UdpRelay(LoopbackServer["_Connection"]):
    """Relays one RTSP server's UDP media to its clients, impaired on demand."""

    kind = "UDP relay"

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        seed: int | None = None,
        max_connections: int = 16,
        max_pending: int = 10_000,
        name: str = "udprelay",
    ) -> None:
        super().__init__(upstream, host=host, name=name)
        self.max_connections = max_connections
        self.max_pending = max_pending
        self._rng = random.Random(seed)
        self._impairment = Impairment()
        self._stats = RelayStats()
        self._lock = threading.Lock()  # guards _impairment, _rng and _stats across threads
        self._pending = 0

    def _drop(self, connection: _Connection) -> None:
        connection.close()

    def close(self, timeout: float = 5.0) -> None:
        """Closes the listener, every connection and relay socket, and drops queued packets."""
        self.stop(timeout)

    # -- control (any thread) ------------------------------------------------------------------
    def url(self, url: str) -> str:
        """``url`` (an rtsp:// URL of the upstream) pointing at the relay instead."""
        return proxied_url(url, self._host, self.port)

    def set_impairment(
        self, *, drop: float = 0.0, delay: float = 0.0, jitter: float = 0.0, duplicate: float = 0.0
    ) -> None:
        """Applies to RTP packets arriving from now on; all zero (the default) is a clean link."""
        impairment = Impairment(drop=drop, delay=delay, jitter=jitter, duplicate=duplicate)
        with self._lock:
            self._impairment = impairment

    @property
    def impairment(self) -> Impairment:
        return self._impairment

    def stats(self) -> RelayStats:
        with self._lock:
            return replace(self._stats, active=len(self._connections))

    # -- data path (relay loop) ----------------------------------------------------------------
    def _count(self, **deltas: int) -> None:
        with self._lock:
            self._stats = replace(
                self._stats, **{key: getattr(self._stats, key) + value for key, value in deltas.items()}
            )

    def _forward(self, forwarder: _Forwarder, data: bytes) -> None:
        if not forwarder.rtp:
            self._send(forwarder, data)
            self._count(rtcp_forwarded=1)
            return
        with self._lock:
            imp = self._impairment
            dropped = imp.drop > 0 and self._rng.random() < imp.drop
            copies = 2 if imp.duplicate > 0 and self._rng.random() < imp.duplicate else 1
            delays = [max(0.0, imp.delay + self._rng.uniform(-imp.jitter, imp.jitter)) for _ in range(copies)]
        if dropped:
            self._count(rtp_received=1, rtp_dropped=1)
            return
        self._count(rtp_received=1, rtp_duplicated=copies - 1)
        loop = self._loop
        assert loop is not None
        for delay in delays:
            if delay <= 0:
                self._send(forwarder, data)
                self._count(rtp_forwarded=1)
            elif self._pending >= self.max_pending:
                self._count(overflow=1)
            else:
                self._pending += 1
                loop.call_later(delay, self._send_delayed, forwarder, data)

    def _send_delayed(self, forwarder: _Forwarder, data: bytes) -> None:
        self._pending -= 1
        self._send(forwarder, data)
        self._count(rtp_forwarded=1)

    @staticmethod
    def _send(forwarder: _Forwarder, data: bytes) -> None:
        if forwarder.transport is not None:  # None: the connection closed meanwhile
            forwarder.transport.sendto(data, forwarder.target)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        peer = client_w.get_extra_info("peername")
        conn = _Connection(str(peer[0]) if peer else "127.0.0.1")
        conn.writers.append(client_w)
        self._count(connections=1)
        if len(self._connections) >= self.max_connections:
            self._count(refused=1)
            conn.close()
            return
        self._connections.add(conn)
        try:
            try:
                server_r, server_w = await asyncio.wait_for(
                    asyncio.open_connection(*self._upstream), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                self._count(refused=1)
                return
            conn.writers.append(server_w)
            up = asyncio.create_task(self._pump(client_r, server_w, self._upstream_rewriter(conn)))
            down = asyncio.create_task(self._pump(server_r, client_w, self._downstream_rewriter(conn)))
            conn.tasks = [up, down]
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._connections.discard(conn)
            conn.close()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rewrite: Callable[[str], Awaitable[str]]
    ) -> None:
        splitter = RtspSplitter()
        try:
            while data := await reader.read(CHUNK):
                for piece in splitter.feed(data):
                    if isinstance(piece, str):
                        writer.write((await rewrite(piece)).encode("latin-1") + b"\r\n\r\n")
                    else:
                        writer.write(piece)
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    def _upstream_rewriter(self, conn: _Connection) -> Callable[[str], Awaitable[str]]:
        """Client → server: each SETUP's client ports become a fresh relay socket pair."""

        async def rewrite(header: str) -> str:
            if not header.upper().startswith("SETUP "):
                return header
            for match in list(_CLIENT_PORT.finditer(header)):
                client_ports = (int(match[1]), int(match[2]))
                if len(conn.to_client) >= MAX_STREAMS_PER_CONNECTION:
                    log.warning("relay: more than %d SETUPs on one connection", MAX_STREAMS_PER_CONNECTION)
                    return header
                relay_ports = await self._open_pair(conn, client_ports)
                conn.to_client[relay_ports] = client_ports
                header = header.replace(match[0], f"client_port={relay_ports[0]}-{relay_ports[1]}", 1)
                self._count(setups=1)
                log.debug("relay: client ports %s -> relay ports %s", client_ports, relay_ports)
            return header

        return rewrite

    @staticmethod
    def _downstream_rewriter(conn: _Connection) -> Callable[[str], Awaitable[str]]:
        """Server → client: the reply names the relay's ports; give the client its own back."""

        async def rewrite(header: str) -> str:
            def back(match: re.Match[str]) -> str:
                ports = conn.to_client.get((int(match[1]), int(match[2])))
                return f"client_port={ports[0]}-{ports[1]}" if ports else match[0]

            return _CLIENT_PORT.sub(back, header)

        return rewrite

    async def _open_pair(self, conn: _Connection, client_ports: tuple[int, int]) -> tuple[int, int]:
        """Two relay sockets, RTP on an even port and RTCP on the next, as RTP convention has it."""
        rtp_sock, rtcp_sock = _bind_pair(self._host)
        for sock, target_port, rtp in (
            (rtp_sock, client_ports[0], True),
            (rtcp_sock, client_ports[1], False),
        ):
            forwarder = _Forwarder(self, (conn.peer_host, target_port), rtp)
            conn.forwarders.append(forwarder)
            await _attach(sock, forwarder)
        return rtp_sock.getsockname()[1], rtcp_sock.getsockname()[1]


async def _attach(sock: socket.socket, forwarder: _Forwarder) -> None:
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: forwarder, sock=sock)


def _bind_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """An even/odd pair of free UDP ports chosen by the OS; any pair if none turns up quickly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _attempt in range(_PAIR_ATTEMPTS):
        first = socket.socket(family, socket.SOCK_DGRAM)
        first.bind((host, 0))
        port = first.getsockname()[1]
        if port % 2 == 0 and port < 65535:
            second = socket.socket(family, socket.SOCK_DGRAM)
            try:
                second.bind((host, port + 1))
            except OSError:
                second.close()
            else:
                return first, second
        first.close()
    first = socket.socket(family, socket.SOCK_DGRAM)
    first.bind((host, 0))
    second = socket.socket(family, socket.SOCK_DGRAM)
    second.bind((host, 0))
    return first, second
