"""HTTP(S) sources: played, and reconnected with backoff when the server goes away."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamwarden.config import parse_stream_spec
from streamwarden.engine import Engine
from streamwarden.state import StreamState
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


class FileServer:
    """A loopback HTTP server for one directory that can be stopped and started again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        handler = functools.partial(_QuietHandler, directory=str(self.directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.allow_reuse_address = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def http_server(h264_ts: Path, h264_mp4: Path, tmp_path: Path) -> Iterator[FileServer]:
    for clip in (h264_ts, h264_mp4):
        (tmp_path / clip.name).write_bytes(clip.read_bytes())
    server = FileServer(tmp_path)
    server.start()
    yield server
    server.stop()


def http_spec(stream_id: str, uri: str) -> object:
    return parse_stream_spec(
        {
            "id": stream_id,
            "source": {"type": "http", "uri": uri, "connect_timeout_seconds": 5},
            "recovery": {"backoff": {"initial_seconds": 0.2, "max_seconds": 0.5, "jitter": "none"}},
        }
    )


@pytest.mark.parametrize("name", ["h264.ts", "h264.mp4"])
def test_http_source_plays_past_the_end_of_the_resource(
    engine: Engine, http_server: FileServer, name: str
) -> None:
    spec = http_spec("web", http_server.url(name))
    engine.add_stream(spec)  # type: ignore[arg-type]
    wait_until(lambda: engine.state("web") == StreamState.PLAYING, 10, message=str(engine.info("web")))
    # 3 s resource: 4.5 s of frames means it went on after the end.
    wait_until(lambda: engine.health("web").frames_total >= 25 * 4.5, 10, message=str(engine.info("web")))
    health = engine.health("web")
    assert health.errors_total == 0 and health.attempts_total == 1, health  # re-requested seamlessly
    assert health.max_frame_gap_seconds < 0.3, health


def test_http_server_down_is_retried_and_resumes(engine: Engine, http_server: FileServer) -> None:
    engine.add_stream(http_spec("web", http_server.url("h264.ts")))  # type: ignore[arg-type]
    wait_until(lambda: engine.state("web") == StreamState.PLAYING, 10, message=str(engine.info("web")))
    http_server.stop()
    wait_until(
        lambda: (engine.info("web")["last_error"] or {}).get("category") == "network",
        10,
        message=f"server down not reported as network: {engine.info('web')}",
    )
    http_server.start()
    wait_until(lambda: engine.state("web") == StreamState.PLAYING, 10, message=str(engine.info("web")))
    assert engine.health("web").recoveries_total >= 1
