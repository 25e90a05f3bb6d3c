"""A fake RTSP server for tests: answers with a configured status, or with garbage.

Real cameras and proxies answer ``404 Not Found`` (wrong path), ``454 Session Not Found`` (a
session the server forgot, e.g. after its restart), ``461 Unsupported Transport`` (TCP refused),
``503 Service Unavailable`` (too many clients), or speak something that is not RTSP at all on the
RTSP port. gst-rtsp-server cannot be made to do most of that, so this tiny responder does.

``FakeRtspServer(statuses={"DESCRIBE": 404})`` answers every method not listed with 200 (a
DESCRIBE 200 carries an H.264 SDP, a SETUP 200 echoes the transport and opens a session, a
PLAY 200 starts nothing: no media is ever sent). ``FakeRtspServer.failing(status)`` picks the
method each status belongs to. ``garbage=True`` answers every request with random bytes;
``garbage_on_connect=True`` sends them before any request.

Loopback only, a free port by default, at most ``max_connections`` at once (more are closed),
requests capped at 64 KiB, every thread joined at ``stop()``. Requests are recorded
(``requests``) so a test can check what a client sent (e.g. an Authorization header).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

__all__ = ["FakeRtspServer", "RtspRequest"]

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    461: "Unsupported Transport",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# Which request a status is the answer to, as servers send them.
METHOD_FOR_STATUS = {
    401: "DESCRIBE",
    403: "DESCRIBE",
    404: "DESCRIBE",
    454: "PLAY",
    461: "SETUP",
    503: "DESCRIBE",
}
SESSION = "5f3c9a1e"
SDP = (
    "v=0\r\n"
    "o=- 1 1 IN IP4 127.0.0.1\r\n"
    "s=fake\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=video 0 RTP/AVP 96\r\n"
    "a=rtpmap:96 H264/90000\r\n"
    "a=fmtp:96 packetization-mode=1\r\n"
    "a=control:stream=0\r\n"
)


@dataclass(frozen=True)
class RtspRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeRtspServer:
    def __init__(
        self,
        statuses: dict[str, int] | None = None,
        *,
        garbage: bool = False,
        garbage_on_connect: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connections: int = 16,
        seed: int = 0,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"loopback only, got {host!r}")
        self.statuses = {k.upper(): v for k, v in (statuses or {}).items()}
        self.garbage = garbage
        self.garbage_on_connect = garbage_on_connect
        self.max_connections = max_connections
        self._rng = random.Random(seed)
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self.requests: list[RtspRequest] = []
        self.connections = 0
        self._acceptor: threading.Thread | None = None

    @classmethod
    def failing(cls, status: int, **kwargs: object) -> FakeRtspServer:
        """A server whose ``status`` answers the request it usually answers (404 -> DESCRIBE, ...)."""
        method = METHOD_FOR_STATUS.get(status, "DESCRIBE")
        return cls({method: status}, **kwargs)  # type: ignore[arg-type]

    def url(self, path: str = "/cam1") -> str:
        return f"rtsp://{self.host}:{self.port}{path}"

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"fakertsp-{self.port}", daemon=True)
        self._acceptor.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        for thread in list(self._threads):
            thread.join(timeout)
        self._listener.close()

    def __enter__(self) -> Self:
        if self._acceptor is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def methods(self) -> list[str]:
        with self._lock:
            return [r.method for r in self.requests]

    # -- serving -------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                if len(self._conns) >= self.max_connections:
                    conn.close()
                    continue
                self._conns.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        buf = b""
        try:
            if self.garbage_on_connect:
                conn.sendall(self._garbage())
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                if len(buf) > MAX_REQUEST:
                    return
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    request = _parse(head)
                    length = int(request.headers.get("content-length", "0") or 0)
                    buf = buf[length:]  # a body (SET_PARAMETER) is not looked at
                    with self._lock:
                        self.requests.append(request)
                    conn.sendall(self._garbage() if self.garbage else self._answer(request))
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _garbage(self) -> bytes:
        with self._lock:
            data = bytes(self._rng.getrandbits(8) for _ in range(512))
        return data.replace(b"$", b"#")  # never a valid interleaved frame by accident

    def _answer(self, request: RtspRequest) -> bytes:
        status = self.statuses.get(request.method, 200)
        headers = [f"CSeq: {request.headers.get('cseq', '0')}", "Server: fakertsp"]
        body = ""
        if status == 200:
            if request.method == "OPTIONS":
                headers.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
            elif request.method == "DESCRIBE":
                base = request.url if request.url.endswith("/") else request.url + "/"
                headers += [f"Content-Base: {base}", "Content-Type: application/sdp"]
                body = SDP
            elif request.method == "SETUP":
                transport = request.headers.get("transport", "RTP/AVP/TCP;unicast;interleaved=0-1")
                headers += [f"Transport: {transport.split(',')[0]}", f"Session: {SESSION};timeout=60"]
            elif request.method in ("PLAY", "TEARDOWN", "GET_PARAMETER"):
                headers.append(f"Session: {SESSION}")
        elif status == 401:
            headers.append('WWW-Authenticate: Basic realm="fakertsp"')
        if body:
            headers.append(f"Content-Length: {len(body.encode())}")
        reason = REASONS.get(status, "Error")
        return ("\r\n".join([f"RTSP/1.0 {status} {reason}", *headers]) + "\r\n\r\n" + body).encode()


def _parse(head: bytes) -> RtspRequest:
    lines = head.decode("latin-1").split("\r\n")
    method, url = "", ""
    parts = lines[0].split()
    if len(parts) >= 2:
        method, url = parts[0].upper(), parts[1]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return RtspRequest(method=method, url=url, headers=headers)
