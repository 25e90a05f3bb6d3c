"""The API's HTTP server against slow and greedy clients: the real uvicorn, raw sockets.

uvicorn 0.54 has no request-head timeout: these tests fail on a plain ``uvicorn.Config`` (a
silent or trickling client holds its connection for ever, and connections are never capped).
Limits are shrunk for speed; the production values are the defaults of ``server_config``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn

from streamwarden import api as api_module
from streamwarden.api import create_app
from streamwarden.config import ApiConfig
from streamwarden.engine import Engine
from streamwarden.httpserver import server_config
from streamwarden.testing.camera import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

HEAD_TIMEOUT = 1.0
KEEP_ALIVE = 1
MAX_CONNECTIONS = 4
MAX_HEADER_BYTES = 2048

ServerFactory = Callable[..., int]


@pytest.fixture
def serve(engine: Engine) -> Iterator[ServerFactory]:
    """``serve(**limits)`` runs the API on a free loopback port in a thread; returns the port."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**limits: Any) -> int:
        port = free_port()
        options: dict[str, Any] = {
            "header_timeout": HEAD_TIMEOUT,
            "keep_alive": KEEP_ALIVE,
            "max_connections": MAX_CONNECTIONS,
            "max_header_bytes": MAX_HEADER_BYTES,
            **limits,
        }
        app = create_app(engine, config=ApiConfig(port=port))
        server = uvicorn.Server(
            server_config(app, "127.0.0.1", port, lifespan="off", log_config=None, **options)
        )
        thread = threading.Thread(target=server.run, name="api-test-server", daemon=True)
        thread.start()
        running.append((server, thread))
        wait_until(lambda: server.started, 10, message="API server did not start")
        return port

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reading and dropping any response); fails after
    ``limit``."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        raise AssertionError(f"connection still open after {limit} s") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def _request(port: int, raw: bytes, timeout: float = 10) -> bytes:
    """The response head to ``raw`` (b"" when the server closed without one)."""
    with _connect(port) as sock:
        data = b""
        try:
            sock.sendall(raw)
            sock.settimeout(timeout)
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        return data


GET_HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def test_a_client_that_never_sends_a_request_is_closed_at_the_head_deadline(serve: ServerFactory) -> None:
    port = serve()
    with _connect(port) as sock:
        waited = _closed_after(sock, HEAD_TIMEOUT + 5)
    assert HEAD_TIMEOUT * 0.8 <= waited < HEAD_TIMEOUT + 2, waited


def test_a_trickled_request_head_does_not_extend_the_deadline(serve: ServerFactory) -> None:
    port = serve()
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        deadline = started + HEAD_TIMEOUT + 5
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"X")  # a header name that never ends: one byte every 0.1 s
            except OSError:
                closed = True
                break
            sock.settimeout(0.1)
            try:
                closed = sock.recv(65536) == b""
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
        waited = time.monotonic() - started
    assert closed and waited < HEAD_TIMEOUT + 2, waited


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_time(serve: ServerFactory) -> None:
    port = serve()
    with _connect(port) as sock:
        sock.sendall(GET_HEALTH)
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        waited = _closed_after(sock, KEEP_ALIVE + 5)
    assert KEEP_ALIVE * 0.8 <= waited < KEEP_ALIVE + 2, waited


def test_a_second_request_on_a_connection_gets_its_own_head_deadline(serve: ServerFactory) -> None:
    port = serve(keep_alive=30)  # uvicorn's keep-alive timer stops at the next request's first byte
    with _connect(port) as sock:
        sock.sendall(GET_HEALTH)
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and then nothing
        waited = _closed_after(sock, HEAD_TIMEOUT + 5)
    assert waited < HEAD_TIMEOUT + 2, waited


def test_a_request_head_growing_past_the_limit_is_refused(serve: ServerFactory) -> None:
    """h11 buffers an unfinished head up to ``max_header_bytes``, then the server answers 400."""
    port = serve()
    answer = _request(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES * 2))
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert _request(port, GET_HEALTH).startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_cap_are_closed_and_the_server_recovers(serve: ServerFactory) -> None:
    port = serve(header_timeout=30)  # the idle ones stay for the whole test
    idle = [_connect(port) for _ in range(MAX_CONNECTIONS)]
    try:
        wait_until(lambda: _request(port, GET_HEALTH, timeout=5) == b"", 5, message="no connection refused")
        with _connect(port) as extra:
            assert _closed_after(extra, 5) < 1.0  # closed at once, not held open
    finally:
        for sock in idle:
            sock.close()
    wait_until(
        lambda: _request(port, GET_HEALTH, timeout=5).startswith(b"HTTP/1.1 200"),
        10,
        message="not serving again",
    )


def test_a_trickled_request_body_is_answered_408(
    serve: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_module, "BODY_TIMEOUT", 1.0)
    port = serve()
    with _connect(port) as sock:
        head = b"POST /streams HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Content-Length: 500\r\n\r\n{")  # and the rest never comes
        sock.settimeout(10)
        started = time.monotonic()
        answer = sock.recv(65536)
        waited = time.monotonic() - started
        while chunk := sock.recv(65536):  # the problem body may come in a packet of its own
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"connection: close" in answer and b"Request body too slow" in answer, answer
    assert 0.8 <= waited < 4, waited
