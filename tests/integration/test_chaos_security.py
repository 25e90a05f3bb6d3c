"""Security checks: odd ids, escaping templates and control characters are refused (config and API);
malformed YAML is a clear error; oversized requests and slow-loris clients against the real API
server leave the engine and its streams unaffected.

test_api.py already covers credentials in responses for a refused connection, 413 by
Content-Length, malformed JSON and schema fuzzing; credentials under network faults are in
test_chaos_network.py.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from streamwarden.api import create_app
from streamwarden.cli import EXIT_CONFIG
from streamwarden.cli import app as cli_app
from streamwarden.config import ApiConfig, ConfigError, parse_stream_spec
from streamwarden.engine import Engine
from tests.integration.conftest import FAST
from tests.integration.engine_child import EngineChild

pytestmark = pytest.mark.integration

ODD_IDS = [
    "../etc",
    "..",
    ".",
    "a/b",
    "a\\b",
    "Cam1",
    "",
    " cam",
    "cam ",
    "x" * 65,
    "cam\x00",
    "cam\n",
    "-cam",
    "_cam",
    "c.m",
    "café",
    "c\u0430m",  # Cyrillic a
    "%2e%2e",
    "cam;rm -rf",
]
ESCAPING_TEMPLATES = [
    "../{stream_id}",
    "/tmp/{stream_id}",
    "{stream_id}/../../x",
    "{stream_id}/..",
    "%Y/../../{stream_id}",
    "{stream_id}\\..\\x",
    ".{stream_id}",
    "{stream_id}/.hidden",
    "{stream_id}.part",
    "{stream_id}/{other}",
    "{stream_id}/%Q",
    "{stream_id}\x00",
    "x",  # no {stream_id}: streams sharing a directory would collide
]


@pytest.fixture
def client(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(engine, config=ApiConfig(), base_dir=tmp_path)) as test_client:
        yield test_client


def _field_errors(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    return [e["field"] for e in response.json()["errors"]]


def test_odd_stream_ids_are_refused_by_the_config_and_the_api(
    client: TestClient, h264_mp4: Path, tmp_path: Path
) -> None:
    for stream_id in ODD_IDS:
        spec = {"id": stream_id, "source": {"type": "file", "path": str(h264_mp4)}}
        with pytest.raises(ConfigError):
            parse_stream_spec(spec)
        assert _field_errors(client.post("/streams", json=spec)) == ["id"], stream_id
        # In a path they name no stream: 404 (or 405), never a 500, never a file.
        for method in ("GET", "PATCH", "DELETE") if stream_id else ():
            quoted = "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in stream_id.encode().decode())
            response = client.request(method, f"/streams/{quoted}", json={})
            assert response.status_code in (404, 405, 422), (method, stream_id, response.status_code)
        for suffix in ("/events", "/recordings", "/restart"):
            response = client.get(f"/streams/..%2F..%2Fetc{suffix}")
            assert response.status_code in (404, 405), (suffix, response.status_code)
    assert client.get("/streams").json() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was created on the way


def test_file_templates_and_paths_that_escape_or_carry_control_characters_are_refused(
    client: TestClient, h264_mp4: Path, tmp_path: Path
) -> None:
    record_dir = str(tmp_path / "rec")
    for template in ESCAPING_TEMPLATES:
        spec = {
            "id": "cam",
            "source": {"type": "file", "path": str(h264_mp4)},
            "record": {"dir": record_dir, "file_template": template},
        }
        with pytest.raises(ConfigError):
            parse_stream_spec(spec)
        assert _field_errors(client.post("/streams", json=spec)) == ["record.file_template"], template
    bad_values: list[tuple[dict[str, Any], str]] = [
        ({"source": {"type": "file", "path": "/tmp/x\x00.mp4"}}, "source.path"),
        ({"source": {"type": "file", "path": "/tmp/x\n[cam] forged log line"}}, "source.path"),
        ({"source": {"type": "rtsp", "uri": "rtsp://127.0.0.1/x\r\nInjected: 1"}}, "source.uri"),
        ({"source": {"type": "http", "uri": "http://127.0.0.1/x\x00"}}, "source.uri"),
        (
            {"source": {"type": "file", "path": str(h264_mp4)}, "record": {"dir": record_dir + "\x00/x"}},
            "record.dir",
        ),
        (
            {"source": {"type": "file", "path": str(h264_mp4)}, "record": {"dir": record_dir + "\n"}},
            "record.dir",
        ),
    ]
    for extra, field in bad_values:
        spec = {"id": "cam", **extra}
        with pytest.raises(ConfigError, match="control characters"):
            parse_stream_spec(spec)
        assert _field_errors(client.post("/streams", json=spec)) == [field], spec
    assert client.get("/streams").json() == []
    assert not (tmp_path / "rec").exists()


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _laughs() -> str:
    lines = ["streams:", '  - &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for index in range(1, 9):
        prev, name = chr(96 + index), chr(97 + index)
        lines.append(f"  - &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("streams:\n  - id: [unclosed\n", "invalid YAML: line"),
        ("streams:\n\t- id: x\n", "invalid YAML: line 2"),
        ('streams: !!python/object/apply:os.system ["touch /tmp/streamwarden-pwned"]\n', "invalid YAML"),
        ("streams: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested too deeply"),
        (bytes(range(256)) * 4, "not UTF-8"),
        ("- id: cam\n", "must be a mapping"),
        (_laughs(), "streams[0]"),
        ("api: {port: 99999}\nstreams: []\n", "api.port"),
    ],
    ids=["unclosed", "tab", "python-tag", "deep", "binary", "list", "billion-laughs", "bad-port"],
)
def test_malformed_yaml_is_a_clear_error_never_a_traceback(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    config = _write(tmp_path / "bad.yaml", content)
    started = time.monotonic()
    result = CliRunner().invoke(cli_app, ["validate", str(config)], env={"COLUMNS": "200"})
    assert time.monotonic() - started < 10
    assert result.exit_code == EXIT_CONFIG, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not Path("/tmp/streamwarden-pwned").exists()


def test_run_with_malformed_yaml_exits_2_and_says_why(tmp_path: Path) -> None:
    config = _write(tmp_path / "bad.yaml", "streams: " + "[" * 20_000 + "]" * 20_000 + "\n")
    result = CliRunner().invoke(cli_app, ["run", str(config)])
    assert result.exit_code == EXIT_CONFIG


# -- the real server: oversized requests and slow-loris clients -------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gst_init: None) -> Iterator[EngineChild]:
    from streamwarden.media.clip import ensure_test_clip

    workdir = tmp_path_factory.mktemp("served")
    clip = ensure_test_clip(workdir / "clip.mp4", seconds=3.0)
    config = {"streams": [{"id": "steady", "source": {"type": "file", "path": str(clip)}, "recovery": FAST}]}
    with EngineChild(config, workdir) as child:
        child.wait_playing(["steady"])
        yield child
        assert child.stop() == 0


def _steady(served: EngineChild) -> dict[str, Any]:
    info: dict[str, Any] = served.api("GET", "/streams/steady").json()
    return info


def _raw(served: EngineChild, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", served.port), timeout=timeout) as sock:
        # The server may close before reading it all: what it answered is what counts.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def test_oversized_requests_get_clear_errors_and_the_engine_is_unaffected(served: EngineChild) -> None:
    big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    # Content-Length says it all: 413 without reading the body.
    response = served.api("POST", "/streams", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    # No Content-Length: counted while it streams in.
    chunks = iter([big[i : i + 65536] for i in range(0, len(big), 65536)])
    response = served.api("POST", "/streams", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    # Headers far over h11's limit, and a very long URL: refused, not a crash.
    answer = _raw(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), answer[:100]
    response = served.api("GET", "/streams/" + "x" * 60_000)
    assert response.status_code in (404, 414, 431)
    assert served.api("GET", "/healthz").status_code == 200
    info = _steady(served)
    events = served.api("GET", "/streams/steady/events").json()
    assert info["state"] == "PLAYING" and info["health"]["attempts_total"] == 1, (info["last_error"], events)


def test_twenty_slow_loris_clients_do_not_disturb_the_api_or_the_streams(served: EngineChild) -> None:
    before = _steady(served)["health"]
    stop = threading.Event()
    closed_by_server: list[int] = []

    def dribble(index: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
                sock.sendall(b"GET /streams HTTP/1.1\r\nHost: x\r\n")
                while not stop.is_set():
                    sock.sendall(b"X")  # one byte of an endless header line
                    stop.wait(0.3)
        except OSError:
            closed_by_server.append(index)

    threads = [threading.Thread(target=dribble, args=(i,), daemon=True) for i in range(20)]
    for thread in threads:
        thread.start()
    latencies = []
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert served.api("GET", "/healthz", timeout=2).status_code == 200
            assert served.api("GET", "/streams/steady", timeout=2).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    after = _steady(served)
    print(
        f"slow-loris: {len(latencies)} probes, p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms; slow clients closed by the server: {len(closed_by_server)}"
    )
    assert max(latencies) < 0.5, latencies
    assert after["state"] == "PLAYING", after
    assert after["health"]["attempts_total"] == before["attempts_total"]
    assert after["health"]["max_frame_gap_seconds"] < 0.5, after["health"]
    assert after["health"]["frames_total"] > before["frames_total"] + 100


def test_redaction_is_linear_in_the_length_of_the_text() -> None:
    """Every log line and API answer passes through redact: a quadratic regex let one long URL
    path (60 kB: 5 s of regex under the GIL) stall every stream of the engine."""
    from streamwarden.redact import redact

    for text in ("x" * 1_000_000, "x" * 500_000 + "rtsp://u:pw@h/x", "password " * 100_000):
        started = time.perf_counter()
        redacted = redact(text)
        assert time.perf_counter() - started < 0.5
        assert "pw@" not in redacted
