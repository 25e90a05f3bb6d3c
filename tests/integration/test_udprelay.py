"""The UDP impairment relay does what it says, judged from plain sockets and a scripted server.

A fake upstream answers one SETUP and then plays the server's part by hand: it sends numbered
datagrams to the relay ports it was given, and the test reads what reaches the client's ports.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from streamwarden.testing.udprelay import Impairment, RtspSplitter, UdpRelay
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

_SETUP = (
    "SETUP rtsp://127.0.0.1:{port}/cam1/stream=0 RTSP/1.0\r\nCSeq: 3\r\n"
    "Transport: RTP/AVP;unicast;client_port={rtp}-{rtcp}\r\n\r\n"
)


class FakeServer:
    """Accepts one control connection, answers its SETUP echoing the transport, records it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(5)
        self.port = self.listener.getsockname()[1]
        self.request = ""
        self.relay_ports: tuple[int, int] | None = None
        self.conn: socket.socket | None = None
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        self.request = data.decode()
        match = re.search(r"client_port=(\d+)-(\d+)", self.request)
        assert match is not None
        self.relay_ports = (int(match[1]), int(match[2]))
        reply = (
            (
                "RTSP/1.0 200 OK\r\nCSeq: 3\r\n"
                f"Transport: RTP/AVP;unicast;client_port={match[1]}-{match[2]};server_port=9000-9001\r\n"
                "Content-Length: 5\r\n\r\nhello"
                # An interleaved frame that merely looks like a transport must pass untouched.
            ).encode()
            + b"$\x00\x00\x10client_port=1-2"[:20]
        )
        conn.sendall(reply)

    def send_rtp(self, count: int, start: int = 0) -> None:
        assert self.relay_ports is not None
        for seq in range(start, start + count):
            self.udp.sendto(struct.pack("!I", seq), ("127.0.0.1", self.relay_ports[0]))

    def close(self) -> None:
        self._thread.join(5)
        if self.conn is not None:
            self.conn.close()
        self.listener.close()
        self.udp.close()


class Client:
    """The RTSP client's side: a control socket through the relay and its own RTP/RTCP sockets."""

    def __init__(self, relay: UdpRelay, server: FakeServer) -> None:
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtcp.bind(("127.0.0.1", 0))
        self.ports = (self.rtp.getsockname()[1], self.rtcp.getsockname()[1])
        self.control = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        self.control.sendall(_SETUP.format(port=relay.port, rtp=self.ports[0], rtcp=self.ports[1]).encode())
        self.reply = b""
        while not self.reply.endswith(b"client_port=1-2"):
            chunk = self.control.recv(4096)
            assert chunk, f"EOF after {self.reply!r}"
            self.reply += chunk
        wait_until(lambda: server.relay_ports is not None, 5)

    def drain(self, sock: socket.socket) -> list[int]:
        sock.setblocking(False)
        got: list[int] = []
        while True:
            try:
                data = sock.recv(64)
            except BlockingIOError:
                return got
            got.append(struct.unpack("!I", data)[0])

    def close(self) -> None:
        for sock in (self.rtp, self.rtcp, self.control):
            sock.close()


@pytest.fixture
def setup() -> Iterator[tuple[UdpRelay, FakeServer, Client]]:
    server = FakeServer()
    relay = UdpRelay(("127.0.0.1", server.port), seed=42)
    relay.start()
    client = Client(relay, server)
    yield relay, server, client
    client.close()
    relay.close()
    server.close()


def test_setup_is_rewritten_both_ways(setup: tuple[UdpRelay, FakeServer, Client]) -> None:
    relay, server, client = setup
    assert server.relay_ports is not None and server.relay_ports != client.ports
    assert server.relay_ports[0] % 2 == 0 and server.relay_ports[1] == server.relay_ports[0] + 1
    assert f"client_port={client.ports[0]}-{client.ports[1]};server_port=9000-9001" in client.reply.decode()
    assert client.reply.endswith(b"\r\n\r\nhello$\x00\x00\x10client_port=1-2")  # body and frame intact
    assert relay.stats().setups == 1 and relay.stats().active == 1


def test_clean_link_forwards_everything_in_order_and_rtcp_too(
    setup: tuple[UdpRelay, FakeServer, Client],
) -> None:
    relay, server, client = setup
    server.send_rtp(200)
    wait_until(lambda: relay.stats().rtp_forwarded == 200, 5, message=str(relay.stats()))
    wait_until(lambda: len(got := client.drain(client.rtp)) > 0 and got == list(range(200)), 5)
    assert server.relay_ports is not None
    server.udp.sendto(struct.pack("!I", 7), ("127.0.0.1", server.relay_ports[1]))
    wait_until(lambda: client.drain(client.rtcp) == [7], 5)
    stats = relay.stats()
    assert (stats.rtp_received, stats.rtp_dropped, stats.rtcp_forwarded) == (200, 0, 1)


def exchange(relay: UdpRelay, server: FakeServer, client: Client, count: int, start: int = 0) -> list[int]:
    """Sends ``count`` RTP datagrams in bursts small enough for the socket buffers; returns what
    reached the client, in arrival order, once the relay has delivered all it meant to."""
    got: list[int] = []
    first = relay.stats()
    for offset in range(0, count, 50):
        server.send_rtp(min(50, count - offset), start=start + offset)
        sent = offset + min(50, count - offset)

        def delivered(sent: int = sent) -> bool:
            got.extend(client.drain(client.rtp))
            s = relay.stats()
            meant = sent - (s.rtp_dropped - first.rtp_dropped) + (s.rtp_duplicated - first.rtp_duplicated)
            return (
                s.rtp_received - first.rtp_received == sent
                and s.rtp_forwarded - first.rtp_forwarded == meant
                and len(got) == meant
            )

        wait_until(delivered, 5, message=f"{relay.stats()}, client got {len(got)}")
    return got


def test_drop_duplicate_and_jitter_are_applied(setup: tuple[UdpRelay, FakeServer, Client]) -> None:
    relay, server, client = setup
    relay.set_impairment(drop=0.2)
    got = exchange(relay, server, client, 500)
    stats = relay.stats()
    assert 60 <= stats.rtp_dropped <= 140 and len(got) == 500 - stats.rtp_dropped
    assert got == sorted(got)  # no delay: no reordering

    relay.set_impairment(duplicate=1.0)
    dup = exchange(relay, server, client, 50, start=1000)
    assert relay.stats().rtp_duplicated == 50
    assert sorted(dup) == sorted(list(range(1000, 1050)) * 2)

    relay.set_impairment(delay=0.05, jitter=0.04)
    late = exchange(relay, server, client, 100, start=2000)
    assert sorted(late) == list(range(2000, 2100)) and late != sorted(late)  # reordered
    assert relay.impairment == Impairment(delay=0.05, jitter=0.04)


def test_close_releases_everything(setup: tuple[UdpRelay, FakeServer, Client]) -> None:
    relay, _server, client = setup
    relay.close()
    client.control.settimeout(2)
    assert client.control.recv(1) == b""  # the control connection is closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=2).close()
    relay.close()  # idempotent


def test_same_seed_same_drops() -> None:
    outcomes = []
    for _ in range(2):
        server = FakeServer()
        with UdpRelay(("127.0.0.1", server.port), seed=5) as relay:
            client = Client(relay, server)
            relay.set_impairment(drop=0.3)
            outcomes.append(exchange(relay, server, client, 100))
            client.close()
        server.close()
    assert outcomes[0] == outcomes[1] and len(outcomes[0]) < 100


def test_splitter_separates_headers_from_bodies_and_interleaved_frames_at_any_chunking() -> None:
    stream = (
        b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 4\r\n\r\n\r\n\r\n"
        + b"$\x01\x00\x06\r\n\r\nxy"
        + b"SETUP rtsp://h/a RTSP/1.0\r\nTransport: client_port=2-3\r\n\r\n"
    )
    for step in (1, 2, 5, 13, len(stream)):
        splitter = RtspSplitter()
        pieces: list[bytes | str] = []
        for i in range(0, len(stream), step):
            pieces += splitter.feed(stream[i : i + step])
        headers = [p for p in pieces if isinstance(p, str)]
        assert headers == [
            "RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 4",
            "SETUP rtsp://h/a RTSP/1.0\r\nTransport: client_port=2-3",
        ], step
        rest = b"".join(p for p in pieces if isinstance(p, bytes))
        assert rest == b"\r\n\r\n" + b"$\x01\x00\x06\r\n\r\nxy", step
    garbage = RtspSplitter()
    assert garbage.feed(b"x" * (70 * 1024)) == [b"x" * (70 * 1024)] and garbage.passthrough


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="loopback"):
        UdpRelay(("10.0.0.1", 554))
    with pytest.raises(ValueError, match="loopback"):
        UdpRelay(("127.0.0.1", 554), host="0.0.0.0")
    with pytest.raises(ValueError):
        Impairment(drop=1.5)
    with pytest.raises(ValueError):
        Impairment(delay=0.01, jitter=0.02)
