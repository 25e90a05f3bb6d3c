"""The fault proxy and the fake RTSP server do what they say, judged from plain sockets.

Each mode is checked against a small upstream of our own (echo, or a fixed payload then close),
so a broken mode cannot hide behind the engine's recovery.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from streamwarden.testing.fakertsp import FakeRtspServer
from streamwarden.testing.faultproxy import Direction, FaultProxy, RtpFrameCounter, proxied_url
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


class Upstream:
    """Loopback TCP server: echoes, or sends ``payload`` then closes; records what it received."""

    def __init__(self, payload: bytes | None = None) -> None:
        self.payload = payload
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.errors: list[BaseException] = []
        self.eof = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            try:
                if self.payload is not None:
                    conn.sendall(self.payload)
                    conn.shutdown(socket.SHUT_WR)
                while not self._stop.is_set():
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        self.eof.set()
                        return
                    self.received += data
                    if self.payload is None:
                        conn.sendall(data)
            except OSError as exc:
                self.errors.append(exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for thread in self._threads:
            thread.join(2)
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[Upstream]:
    upstream = Upstream()
    yield upstream
    upstream.close()


@contextlib.contextmanager
def proxy_to(port: int, **kwargs: object) -> Iterator[FaultProxy]:
    proxy = FaultProxy(("127.0.0.1", port), **kwargs)  # type: ignore[arg-type]
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    return sock


def assert_reset_at_connect(proxy: FaultProxy) -> None:
    """The proxy accepts and resets at once: the RST may even beat connect()'s return."""
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:
        sock.settimeout(2)
        sock.recv(1)


def recv_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    out = b""
    while len(out) < size:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {size} bytes")
        out += chunk
    return out


def test_passthrough_forwards_both_ways_and_counts(echo: Upstream) -> None:
    with proxy_to(echo.port) as proxy, connect(proxy) as sock:
        sock.sendall(b"hello through the proxy")
        assert recv_exactly(sock, 23) == b"hello through the proxy"
        stats = proxy.stats()
        assert stats.accepted == 1 and stats.active == 1
        assert stats.bytes_up == 23 and stats.bytes_down == 23


def test_reset_sends_rst_to_both_sides(echo: Upstream) -> None:
    with proxy_to(echo.port) as proxy, connect(proxy) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        assert proxy.reset() == 1
        sock.settimeout(2)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)  # RST, not an orderly FIN (which would return b"")
        wait_until(lambda: any(isinstance(e, ConnectionResetError) for e in echo.errors), 2)
        assert proxy.stats().resets == 1 and proxy.stats().active == 0


def test_blackhole_keeps_the_connection_open_and_forwards_nothing(echo: Upstream) -> None:
    with proxy_to(echo.port) as proxy, connect(proxy) as sock:
        proxy.blackhole(True)
        sock.sendall(b"lost")
        sock.settimeout(0.6)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # no echo, and no EOF or reset either: the connection stays open
        assert bytes(echo.received) == b""
        assert proxy.stats().bytes_dropped == 4
        # New connections are accepted but go nowhere too.
        with connect(proxy) as other:
            other.sendall(b"?")
            other.settimeout(0.3)
            with pytest.raises(TimeoutError):
                other.recv(1)
        proxy.blackhole(False)
        sock.sendall(b"back")
        assert recv_exactly(sock, 4) == b"back"


def test_blackhole_in_one_direction_only(echo: Upstream) -> None:
    with proxy_to(echo.port) as proxy, connect(proxy) as sock:
        proxy.blackhole(True, Direction.DOWNSTREAM)
        sock.sendall(b"up")
        wait_until(lambda: bytes(echo.received) == b"up", 2, message="upstream direction must still flow")
        sock.settimeout(0.4)
        with pytest.raises(TimeoutError):
            sock.recv(1)


def test_latency_and_jitter_delay_each_chunk_and_keep_order(echo: Upstream) -> None:
    with proxy_to(echo.port, seed=1) as proxy, connect(proxy) as sock:
        sock.sendall(b"0")
        recv_exactly(sock, 1)
        proxy.set_latency(0.15)
        started = time.monotonic()
        sock.sendall(b"1")
        recv_exactly(sock, 1)
        rtt = time.monotonic() - started
        assert 0.3 <= rtt < 0.6, rtt  # 150 ms each way
        proxy.set_latency(0.1, jitter=0.05)
        rtts = []
        for index in range(8):
            started = time.monotonic()
            sock.sendall(bytes([index]))
            assert recv_exactly(sock, 1) == bytes([index])
            rtts.append(time.monotonic() - started)
        assert min(rtts) >= 0.1 - 0.01 and max(rtts) < 0.45, rtts
        assert max(rtts) - min(rtts) > 0.01, rtts  # jitter varies the delay
        # Many small writes under jitter still arrive in order.
        payload = b"".join(struct.pack("!H", i) for i in range(200))
        for i in range(0, len(payload), 2):
            sock.sendall(payload[i : i + 2])
        assert recv_exactly(sock, len(payload), timeout=10) == payload
        proxy.set_latency(0)
        started = time.monotonic()
        sock.sendall(b"z")
        recv_exactly(sock, 1)
        assert time.monotonic() - started < 0.1


def test_bandwidth_limit_paces_the_transfer() -> None:
    payload = bytes(range(256)) * 400  # 100 KiB
    upstream = Upstream(payload=payload)
    try:
        with proxy_to(upstream.port) as proxy:
            proxy.set_bandwidth(50_000)
            with connect(proxy) as sock:
                started = time.monotonic()
                assert recv_exactly(sock, len(payload), timeout=10) == payload
                elapsed = time.monotonic() - started
        assert 1.7 <= elapsed <= 3.5, elapsed  # 102400 B at 50 kB/s = 2.05 s
    finally:
        upstream.close()


def test_slow_close_delays_the_fin() -> None:
    upstream = Upstream(payload=b"bye")
    try:
        with proxy_to(upstream.port) as proxy:
            proxy.set_slow_close(0.8)
            with connect(proxy) as sock:
                assert recv_exactly(sock, 3) == b"bye"
                got_data = time.monotonic()
                sock.settimeout(5)
                assert sock.recv(1) == b""  # FIN, but only after the delay
                assert time.monotonic() - got_data >= 0.7
            proxy.set_slow_close(0)
            with connect(proxy) as sock:
                assert recv_exactly(sock, 3) == b"bye"
                got_data = time.monotonic()
                sock.settimeout(5)
                assert sock.recv(1) == b""
                assert time.monotonic() - got_data < 0.3
    finally:
        upstream.close()


def test_half_close_downstream_fin_to_the_client_while_it_can_still_send(echo: Upstream) -> None:
    with proxy_to(echo.port) as proxy, connect(proxy) as sock:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        assert proxy.half_close(Direction.DOWNSTREAM) == 1
        sock.settimeout(2)
        assert sock.recv(1) == b""  # FIN towards the client
        sock.sendall(b"still")  # ... but the other direction is open
        wait_until(lambda: bytes(echo.received) == b"astill", 2, message=str(echo.received))


def test_half_close_upstream_fin_to_the_server(echo: Upstream) -> None:
    with proxy_to(echo.port) as proxy, connect(proxy) as sock:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        assert proxy.half_close(Direction.UPSTREAM) == 1
        assert echo.eof.wait(2)  # the server read EOF
        sock.sendall(b"dropped")
        time.sleep(0.2)
        assert bytes(echo.received) == b"a"


def test_refuse_max_connections_and_set_upstream(echo: Upstream) -> None:
    other = Upstream(payload=b"other")
    try:
        with proxy_to(echo.port, max_connections=1) as proxy:
            proxy.refuse(True)
            assert_reset_at_connect(proxy)
            proxy.refuse(False)
            with connect(proxy) as first:
                first.sendall(b"1")
                assert recv_exactly(first, 1) == b"1"
                assert_reset_at_connect(proxy)  # over max_connections
            wait_until(lambda: proxy.stats().active == 0, 2)
            proxy.set_upstream("127.0.0.1", other.port)
            with connect(proxy) as sock:
                assert recv_exactly(sock, 5) == b"other"
            assert proxy.stats().refused == 2
    finally:
        other.close()


def test_unreachable_upstream_resets_the_client() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with proxy_to(port) as proxy:
        assert_reset_at_connect(proxy)
        assert proxy.stats().upstream_failures == 1


def test_loopback_only_and_bounded_arguments() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(("10.0.0.1", 554))
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(("127.0.0.1", 554), host="0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        FakeRtspServer(host="0.0.0.0")
    with proxy_to(1) as proxy:
        with pytest.raises(ValueError):
            proxy.set_latency(0.1, jitter=0.2)
        with pytest.raises(ValueError):
            proxy.set_bandwidth(0)
        with pytest.raises(ValueError):
            proxy.half_close(Direction.BOTH)
    with pytest.raises(RuntimeError, match="not running"):
        proxy.reset()


def _interleaved(channel: int, marker: bool, size: int = 20) -> bytes:
    rtp = bytes([0x80, (0x80 if marker else 0) | 96]) + b"\0" * (size - 2)
    return b"$" + bytes([channel]) + struct.pack("!H", len(rtp)) + rtp


def test_rtp_frame_counter_counts_marker_packets_across_any_chunking() -> None:
    response = b"RTSP/1.0 200 OK\r\nCSeq: 5\r\nContent-Length: 4\r\n\r\nabcd"
    stream = (
        response
        + _interleaved(0, False)
        + _interleaved(0, True)
        + _interleaved(1, True)  # RTCP channel: not a frame
        + b"RTSP/1.0 200 OK\r\nCSeq: 6\r\n\r\n"
        + _interleaved(0, True, size=1400)
    )
    for step in (1, 3, 7, 64, len(stream)):
        counter = RtpFrameCounter()
        counted = sum(counter.feed(stream[i : i + step]) for i in range(0, len(stream), step))
        assert counted == counter.frames == 2, step
        assert counter.packets == 3 and not counter.desynced
    garbage = RtpFrameCounter()
    garbage.feed(b"\x01\x02 not rtsp at all\r\n\r\n" + _interleaved(0, True))
    assert garbage.desynced and garbage.frames == 0


def test_proxied_url_keeps_credentials_and_path() -> None:
    assert proxied_url("rtsp://u:p%40w@127.0.0.1:554/cam1?x=1", "127.0.0.1", 9) == (
        "rtsp://u:p%40w@127.0.0.1:9/cam1?x=1"
    )
    assert proxied_url("rtsp://127.0.0.1:554/a", "127.0.0.1", 9) == "rtsp://127.0.0.1:9/a"


# -- the fake RTSP server ------------------------------------------------------------------------
def rtsp_exchange(port: int, method: str, cseq: int = 1, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"{method} rtsp://127.0.0.1:{port}/cam1 RTSP/1.0\r\nCSeq: {cseq}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize(
    ("status", "method"), [(404, "DESCRIBE"), (454, "PLAY"), (461, "SETUP"), (503, "DESCRIBE")]
)
def test_fake_rtsp_answers_the_configured_status(status: int, method: str) -> None:
    with FakeRtspServer.failing(status) as server:
        assert rtsp_exchange(server.port, "OPTIONS").startswith(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n")
        answer = rtsp_exchange(server.port, method, cseq=7)
        assert answer.startswith(f"RTSP/1.0 {status} ".encode()) and b"CSeq: 7" in answer
        assert server.methods() == ["OPTIONS", method]


def test_fake_rtsp_describe_carries_an_sdp_and_garbage_mode_is_not_rtsp() -> None:
    with FakeRtspServer() as server, socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(b"DESCRIBE rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 2\r\n\r\n")
        time.sleep(0.2)
        answer = sock.recv(65536)
        assert b"Content-Type: application/sdp" in answer and answer.endswith(b"a=control:stream=0\r\n")
    with (
        FakeRtspServer(garbage=True) as server,
        socket.create_connection(("127.0.0.1", server.port), 2) as sock,
    ):
        sock.sendall(b"OPTIONS rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        answer = recv_exactly(sock, 512)
        assert not answer.startswith(b"RTSP/")
    with (
        FakeRtspServer(garbage_on_connect=True) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock,
    ):
        assert len(recv_exactly(sock, 512)) == 512  # before any request


def test_frames_to_a_connection_the_client_replaced_are_counted_apart() -> None:
    """A client that reconnected has given up on its old connection: what the server still
    writes there (a frozen camera's catch-up burst) is not something the client's current
    attempt was given."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    conn.sendall(_interleaved(0, True))
                except OSError:
                    return
                time.sleep(0.01)

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        with proxy_to(listener.getsockname()[1]) as proxy, connect(proxy) as old:
            wait_until(lambda: proxy.stats().frames_forwarded >= 5, 2)
            with connect(proxy) as new:
                new.settimeout(2)
                new.recv(1)
                before = proxy.stats()
                wait_until(lambda: proxy.stats().frames_stale >= before.frames_stale + 5, 2)
                stats = proxy.stats()
                assert stats.frames_forwarded > before.frames_forwarded  # the new one counts
                assert old.recv(65536)  # the old one still gets data, counted as stale
    finally:
        stop.set()
        acceptor.join(2)
        listener.close()
