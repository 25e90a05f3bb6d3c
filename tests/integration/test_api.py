"""The REST API against a real running engine (httpx through Starlette's TestClient, plus one real
uvicorn): the add/patch/remove cycle, every error code, auth, redaction everywhere, fuzzing from
the OpenAPI document, persisted state across a restart, and /metrics.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from typer.testing import CliRunner

from streamwarden.api import MAX_BODY_BYTES, TOKEN_ENV, InsecureApiError, create_app
from streamwarden.cli import EXIT_API, EXIT_OK, EXIT_START, run_engine
from streamwarden.cli import TOKEN_ENV as CLI_TOKEN_ENV
from streamwarden.cli import app as cli_app
from streamwarden.config import ApiConfig, Config, RtspSource, parse_stream_spec
from streamwarden.engine import Engine
from streamwarden.media.clip import ensure_test_clip
from streamwarden.persist import StateStore, restore_streams
from streamwarden.state import StreamState
from streamwarden.testing.camera import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

TOKEN = "api-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"
FAST = {
    "backoff": {"initial_seconds": 0.2, "multiplier": 2, "max_seconds": 1.0, "jitter": "none"},
    "breaker": {"failure_threshold": 50, "open_seconds": 1},
    "stall_timeout_seconds": 2,
}


@pytest.fixture
def engine(gst_init: None) -> Iterator[Engine]:
    with Engine() as running:
        yield running


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, gst_init: None) -> Path:
    return ensure_test_clip(tmp_path_factory.mktemp("api-clip") / "one.mp4", seconds=1.0)


def client_for(engine: Engine, **api: Any) -> TestClient:
    """raise_server_exceptions: an unhandled error in a handler fails the test instead of a 500."""
    store = api.pop("state_store", None)
    if isinstance(api.get("token"), str):
        api["token"] = SecretStr(api["token"])
    app = create_app(engine, config=ApiConfig(**api), state_store=store)
    return TestClient(app, raise_server_exceptions=True)


def file_spec(stream_id: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"id": stream_id, "source": {"type": "file", "path": str(path)}, "recovery": FAST, **extra}


def wait_state(client: TestClient, stream_id: str, state: str, timeout: float = 10) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal last
        last = client.get(f"/streams/{stream_id}").json()
        return last.get("state") == state

    wait_until(reached, timeout, interval=0.1, message=f"{stream_id} not {state} within {timeout} s: {last}")
    return last


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    assert problem["type"].startswith("urn:streamwarden:problem:")
    if field is not None:
        fields = [error["field"] for error in problem.get("errors", [])]
        assert field in fields, problem
        assert field in problem["detail"], problem
    return problem


# -- the add / patch / remove cycle ----------------------------------------------------------------
def test_add_patch_remove_cycle_with_a_file_stream(
    engine: Engine, clip: Path, h264_mkv: Path, tmp_path: Path
) -> None:
    with client_for(engine) as client:
        response = client.post("/streams", json=file_spec("lobby", clip))
        assert response.status_code == 201, response.text
        assert response.headers["location"] == "/streams/lobby"
        assert response.json()["id"] == "lobby"

        info = wait_state(client, "lobby", "PLAYING")
        health = info["health"]
        for key in ("fps", "last_frame_age_seconds", "frames_total", "recoveries_total"):
            assert key in health, health
        assert info["spec"]["source"] == {"type": "file", "path": str(clip)}
        assert info["breaker"]["state"] == "closed" and info["quarantine"]["active"] is False
        assert info["recorder"] is None and info["server"] is None
        assert [s["id"] for s in client.get("/streams").json()] == ["lobby"]

        # Recovery only: merged into the current policy, no new pipeline.
        response = client.patch("/streams/lobby", json={"recovery": {"stall_timeout_seconds": 3}})
        assert response.status_code == 200, response.text
        recovery = response.json()["spec"]["recovery"]
        assert recovery["stall_timeout_seconds"] == 3 and recovery["backoff"]["initial_seconds"] == 0.2
        assert response.json()["health"]["attempts_total"] == 1

        # Another file: a new pipeline on the new source.
        response = client.patch(
            "/streams/lobby",
            json={"source": {"path": str(h264_mkv)}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status_code == 200, response.text
        info = wait_state(client, "lobby", "PLAYING")
        assert info["spec"]["source"]["path"] == str(h264_mkv) and info["health"]["attempts_total"] == 2

        # Recording on, then its files listed (interim listing), filtered by time.
        record = {"dir": str(tmp_path / "rec"), "format": "mkv", "segment_seconds": 1}
        assert client.patch("/streams/lobby", json={"record": record}).status_code == 200
        wait_until(
            lambda: len(client.get("/streams/lobby/recordings").json()) >= 2, 10, message="no segments"
        )
        files = client.get("/streams/lobby/recordings").json()
        assert all(f["name"].startswith("lobby-") and f["bytes"] >= 0 for f in files), files
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        assert client.get("/streams/lobby/recordings", params={"from": future}).json() == []
        assert client.get("/streams/lobby/recordings", params={"to": past}).json() == []
        assert len(client.get("/streams/lobby/recordings", params={"from": past, "to": future}).json()) >= 2
        assert client.get("/streams/lobby").json()["recorder"]["active"] is True
        assert client.patch("/streams/lobby", json={"record": None}).json()["recorder"] is None

        # Disabled stops it; enabled starts it again.
        assert client.patch("/streams/lobby", json={"enabled": False}).status_code == 200
        wait_state(client, "lobby", "STOPPED")
        assert client.patch("/streams/lobby", json={"enabled": True}).status_code == 200
        wait_state(client, "lobby", "PLAYING")

        response = client.post("/streams/lobby/restart")
        assert response.status_code == 200 and response.json()["id"] == "lobby"
        wait_state(client, "lobby", "PLAYING")
        assert client.post("/streams/lobby/resume").status_code == 200
        events = client.get("/streams/lobby/events").json()
        reasons = [e["reason"] for e in events]
        assert "restart requested" in reasons and "resumed by operator" in reasons
        assert {"at", "from_state", "to_state", "reason", "category", "transience"} <= set(events[-1])

        response = client.delete("/streams/lobby")
        assert response.status_code == 204 and response.content == b""
        assert_problem(client.get("/streams/lobby"), 404)
        assert client.get("/streams").json() == []
        assert engine.stream_ids() == []


# -- errors ----------------------------------------------------------------------------------------
def test_each_error_code_is_a_problem_naming_the_field(engine: Engine, clip: Path) -> None:
    with client_for(engine) as client:
        assert client.post("/streams", json=file_spec("one", clip)).status_code == 201
        for method, path in [
            ("GET", "/streams/nope"),
            ("PATCH", "/streams/nope"),
            ("DELETE", "/streams/nope"),
            ("POST", "/streams/nope/restart"),
            ("POST", "/streams/nope/resume"),
            ("GET", "/streams/nope/events"),
            ("GET", "/streams/nope/recordings"),
        ]:
            patch = {"enabled": True} if method == "PATCH" else None
            problem = assert_problem(client.request(method, path, json=patch), 404)
            assert problem["instance"] == path and "nope" in problem["detail"]

        assert_problem(client.post("/streams", json=file_spec("one", clip)), 409, "id")

        bad: dict[str, tuple[Any, str | None]] = {
            "id": ({**file_spec("x", clip), "id": "Not Valid"}, "id"),
            "source": ({"id": "x"}, "source"),
            "source.uri": ({"id": "x", "source": {"type": "rtsp", "uri": "http://h/x"}}, "source.uri"),
            "source.type": ({"id": "x", "source": {"type": "webcam"}}, "source"),
            "extra": ({**file_spec("x", clip), "bogus": 1}, "bogus"),
            "lax bool": ({**file_spec("x", clip), "enabled": "yes"}, "enabled"),
            "lax number": ({**file_spec("x", clip), "recovery": {"stall_timeout_seconds": "5"}}, None),
            "cross-field": (
                {
                    **file_spec("x", clip),
                    "recovery": {"breaker": {"open_seconds": 30, "max_open_seconds": 1}},
                },
                "recovery.breaker",
            ),
            "root": ([file_spec("x", clip)], "(root)"),
        }
        for name, (body, field) in bad.items():
            problem = assert_problem(client.post("/streams", json=body), 422, field)
            assert problem["errors"], name
        assert engine.stream_ids() == ["one"]

        assert_problem(client.patch("/streams/one", json={"id": "two"}), 422, "id")
        assert_problem(client.patch("/streams/one", json={"typo": None}), 422, "typo")
        assert_problem(client.patch("/streams/one", json={"record": {"format": "avi"}}), 422, "record.dir")
        assert_problem(client.patch("/streams/one", json={"source": None}), 422, "source")
        assert_problem(client.patch("/streams/one", json=["enabled"]), 422, "(root)")

        # Malformed bodies: 400, never a 500.
        for raw in (b'{"id": ', b"", b"   ", b"\xff\xfe\x00", b'{"a": NaN}', b'{"a": 1e999}', b"[" * 200_000):
            for method, path in (("POST", "/streams"), ("PATCH", "/streams/one")):
                response = client.request(
                    method, path, content=raw, headers={"Content-Type": "application/json"}
                )
                assert_problem(response, 400)

        # Too large: by Content-Length, and streamed without one.
        huge = b'{"id": "x", "pad": "' + b"a" * MAX_BODY_BYTES + b'"}'
        assert_problem(client.post("/streams", content=huge), 413)

        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b" " * (MAX_BODY_BYTES // 10)

        assert_problem(client.post("/streams", content=chunks()), 413)
        assert_problem(client.patch("/streams/one", content=huge), 413)

        assert_problem(client.get("/streams/one/recordings", params={"from": "yesterday"}), 422, "from")
        response = client.put("/streams")
        assert_problem(response, 405)
        assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}
        assert_problem(client.get("/no/such/path"), 404)
        assert engine.state("one") in (StreamState.CONNECTING, StreamState.PLAYING)


# -- auth ------------------------------------------------------------------------------------------
def test_token_is_required_when_configured(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with client_for(engine, token=TOKEN) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            for method, path in (
                ("GET", "/streams"),
                ("POST", "/streams"),
                ("GET", "/metrics"),
                ("GET", "/readyz"),
            ):
                response = client.request(method, path, headers=headers, json={})
                assert_problem(response, 401)
                assert response.headers["www-authenticate"] == "Bearer"
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/streams", headers=AUTH).json() == []
        assert client.get("/readyz", headers=AUTH).json() == {"status": "ready"}
        operations = client.get("/openapi.json").json()["paths"]
        assert operations["/streams"]["post"]["security"] == [{"HTTPBearer": []}]
        assert "security" not in operations["/healthz"]["get"]

    with client_for(engine, token=TOKEN, read_only_open=True) as client:
        assert client.get("/streams").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert_problem(client.post("/streams", json={}), 401)
        assert_problem(client.delete("/streams/x"), 401)
        assert_problem(client.post("/streams/x/resume"), 401)

    monkeypatch.setenv(TOKEN_ENV, "from-the-environment")
    with client_for(engine) as client:
        assert_problem(client.get("/streams"), 401)
        assert (
            client.get("/streams", headers={"Authorization": "Bearer from-the-environment"}).status_code
            == 200
        )

    monkeypatch.delenv(TOKEN_ENV)
    with client_for(engine) as client:  # loopback and no token: open
        assert client.get("/streams").status_code == 200
        assert "security" not in client.get("/openapi.json").json()["paths"]["/streams"]["post"]


def test_non_loopback_without_token_is_refused(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    assert CLI_TOKEN_ENV == TOKEN_ENV
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    for host in ("0.0.0.0", "::", "192.0.2.7", "camera-hub.example"):
        with pytest.raises(InsecureApiError, match="token"):
            create_app(engine, config=ApiConfig(host=host))
        create_app(engine, config=ApiConfig(host=host, token=SecretStr(TOKEN)))
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        create_app(engine, config=ApiConfig(host=host))

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert run_engine(Config(api=ApiConfig(host="0.0.0.0"))) == EXIT_START
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- redaction -------------------------------------------------------------------------------------
def test_credentials_appear_in_no_response_event_metric_or_log(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = ("s3cr3t-in-uri", "pw-in-field", "camuser")
    port = free_port()  # closed: the stream fails, so the URL travels through errors and events
    spec: dict[str, Any] = {
        "id": "cam",
        "source": {
            "type": "rtsp",
            "uri": f"rtsp://camuser:s3cr3t-in-uri@127.0.0.1:{port}/live",
            "password": "pw-in-field",
            "connect_timeout_seconds": 2,
        },
        "recovery": FAST,
    }
    seen: list[str] = []
    with client_for(engine) as client:
        response = client.post("/streams", json=spec)
        assert response.status_code == 201
        seen.append(response.text)
        wait_until(
            lambda: client.get("/streams/cam").json()["last_error"] is not None, 10, message="never failed"
        )
        seen.append(client.post("/streams", json=spec).text)  # 409
        bad_uri = {
            **spec,
            "id": "bad",
            "source": {**spec["source"], "uri": "rtsp://camuser:s3cr3t-in-uri@h:99999/x"},
        }
        seen.append(client.post("/streams", json=bad_uri).text)
        no_scheme = {**spec, "id": "bad", "source": {**spec["source"], "uri": "camuser:s3cr3t-in-uri@h/x"}}
        seen.append(client.post("/streams", json=no_scheme).text)
        numeric_pw = {**spec, "id": "bad", "source": {**spec["source"], "password": 8_675_309}}
        response = client.post("/streams", json=numeric_pw)
        assert "8675309" not in response.text
        seen.append(client.patch("/streams/cam", json={"source": {"latency_ms": 100}}).text)
        wait_until(
            lambda: client.get("/streams/cam").json()["last_error"] is not None, 10, message="never failed"
        )
        for path in ("/streams", "/streams/cam", "/streams/cam/events", "/metrics", "/openapi.json"):
            seen.append(client.get(path).text)
        seen.append(json.dumps([e.as_dict() for e in engine.events("cam")]))
        # The credentials are still there for the engine to use.
        source = engine.spec("cam").source
        assert isinstance(source, RtspSource) and source.password is not None
        assert source.password.get_secret_value() == "pw-in-field" and "s3cr3t-in-uri" in source.uri
    assert "rtsp://***@127.0.0.1" in seen[0]
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "failure" in logged  # the stream's failures were logged: the check below is not vacuous
    for secret in secrets:
        for text in seen:
            assert secret not in text, (secret, text[:2000])
        assert secret not in logged, secret


# -- fuzzing from the OpenAPI document ---------------------------------------------------------------
# The schema is read from an app whose engine starts only in the fixture: parametrize needs it at
# import time. (schemathesis.pytest.from_fixture would avoid that, but its subtests break on pytest 9.)
_FUZZ_ENGINE = Engine(name="fuzz")
_FUZZ_APP = create_app(_FUZZ_ENGINE, config=ApiConfig(token=SecretStr(TOKEN)))
fuzz_schema = schemathesis.openapi.from_asgi("/openapi.json", _FUZZ_APP)


@pytest.fixture(scope="module")
def fuzz_engine(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Path]]:
    _FUZZ_ENGINE.start()
    try:
        _FUZZ_ENGINE.add_stream(parse_stream_spec(file_spec("steady", clip)))
        wait_until(
            lambda: _FUZZ_ENGINE.state("steady") == StreamState.PLAYING, 10, message="steady not playing"
        )
        yield _FUZZ_ENGINE, tmp_path_factory.mktemp("fuzz")
    finally:
        _FUZZ_ENGINE.stop()


def _confine(value: Any, sandbox: Path, closed_port: int) -> Any:
    """Generated sources point at loopback (a closed port) and files/recordings into a sandbox:
    the fuzzer must never make the engine connect out or write outside the test's directory."""
    if isinstance(value, list):
        return [_confine(item, sandbox, closed_port) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: _confine(item, sandbox, closed_port) for key, item in value.items()}
    uri = result.get("uri")
    if isinstance(uri, str) and "://" in uri:
        result["uri"] = f"{urlsplit(uri).scheme}://127.0.0.1:{closed_port}/fuzz"
    for key in ("path", "dir"):
        if isinstance(result.get(key), str) and result[key]:
            result[key] = str(sandbox / f"{key}-{abs(hash(result[key])) % 10_000}")
    return result


@fuzz_schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_fuzz_from_the_openapi_document(case: Any, fuzz_engine: tuple[Engine, Path]) -> None:
    """Every default schemathesis check (no 5xx, documented status codes, content types and
    response schemas, negative data rejected, auth not ignored, ...) except positive data
    acceptance: cross-field rules (max_seconds >= initial_seconds) reject schema-valid input."""
    engine, sandbox = fuzz_engine
    if isinstance(case.body, dict | list):
        case.body = _confine(case.body, sandbox, closed_port=free_port())
    response = case.call_and_validate(
        headers=AUTH, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )
    assert response.status_code < 500
    assert engine.state("steady") == StreamState.PLAYING


# -- persisted state ---------------------------------------------------------------------------------
def test_streams_added_through_the_api_come_back_after_a_restart(
    gst_init: None, clip: Path, tmp_path: Path
) -> None:
    store = StateStore.for_config(tmp_path / "site.yaml")
    port = free_port()
    quarantining = {
        "backoff": {"initial_seconds": 0.2, "jitter": "none"},
        "breaker": {"failure_threshold": 1, "open_seconds": 60},
        "quarantine": {"trips": 1, "window_seconds": 600, "quarantine_seconds": 900},
    }
    cam = {
        "id": "cam",
        "source": {"type": "rtsp", "uri": f"rtsp://u:pw-kept@127.0.0.1:{port}/x", "password": "pw2"},
        "recovery": quarantining,
    }
    with Engine() as first, client_for(first, state_store=store) as client:
        assert client.post("/streams", json=file_spec("keep", clip)).status_code == 201
        assert client.post("/streams", json=file_spec("gone", clip)).status_code == 201
        assert (
            client.patch("/streams/keep", json={"recovery": {"stall_timeout_seconds": 4}}).status_code == 200
        )
        assert client.delete("/streams/gone").status_code == 204
        assert client.post("/streams", json=cam).status_code == 201
        wait_state(client, "cam", "QUARANTINED")
        assert client.app.state.saver.wait_idle()  # type: ignore[attr-defined]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "pw-kept" in store.path.read_text()  # the state file is the source of truth

    loaded = store.load()
    assert loaded.problem is None and loaded.streams is not None
    with Engine() as second:
        assert restore_streams(second, loaded.streams) == ["keep", "cam"]
        with client_for(second, state_store=store) as client:
            keep = wait_state(client, "keep", "PLAYING")
            assert keep["spec"]["recovery"]["stall_timeout_seconds"] == 4
            info = client.get("/streams/cam").json()
            assert info["state"] == "QUARANTINED", info
            assert 800 < info["quarantine"]["seconds_remaining"] <= 900
            assert "restored" in info["quarantine"]["reason"]
            assert info["health"]["attempts_total"] == 0  # parked without a connection attempt
            source = second.spec("cam").source
            assert isinstance(source, RtspSource) and source.password is not None
            assert source.password.get_secret_value() == "pw2" and "pw-kept" in source.uri

            lenient = {"breaker": {"failure_threshold": 100}, "quarantine": {"trips": 100}}
            assert client.patch("/streams/cam", json={"recovery": lenient}).status_code == 200
            resumed = client.post("/streams/cam/resume").json()
            assert resumed["quarantine"]["active"] is False
    after = store.load()
    assert after.streams is not None
    assert {s.spec.id: s.quarantined_until for s in after.streams} == {"keep": None, "cam": None}


# -- metrics ---------------------------------------------------------------------------------------
def scrape(client: TestClient) -> dict[str, Any]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def sample_value(families: dict[str, Any], name: str, **labels: str) -> float | None:
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def test_metrics_parse_follow_recoveries_and_drop_removed_streams(
    engine: Engine, clip: Path, tmp_path: Path
) -> None:
    moving = tmp_path / "moving.mp4"
    moving.write_bytes(clip.read_bytes())
    with client_for(engine) as client:
        assert client.post("/streams", json=file_spec("stay", clip)).status_code == 201
        assert client.post("/streams", json=file_spec("flaky", moving)).status_code == 201
        wait_state(client, "stay", "PLAYING")
        wait_state(client, "flaky", "PLAYING")
        hidden = tmp_path / "hidden.mp4"
        moving.rename(hidden)
        wait_until(
            lambda: (client.get("/streams/flaky").json()["last_error"] or {}).get("category") == "not_found",
            10,
            message="missing file not reported",
        )
        hidden.rename(moving)
        wait_until(
            lambda: client.get("/streams/flaky").json()["health"]["recoveries_total"] == 1,
            10,
            message="no recovery",
        )

        families = scrape(client)
        assert sample_value(families, "streamwarden_stream_up", stream="stay") == 1
        assert (sample_value(families, "streamwarden_stream_frames_total", stream="stay") or 0) > 0
        assert sample_value(families, "streamwarden_stream_state", stream="stay", state="PLAYING") == 1
        assert sample_value(families, "streamwarden_stream_state", stream="stay", state="BACKOFF") == 0
        assert sample_value(families, "streamwarden_breaker_state", stream="stay") == 0
        errors = "streamwarden_stream_errors_total"
        assert (sample_value(families, errors, stream="flaky", category="not_found") or 0) >= 1
        recoveries = "streamwarden_stream_recoveries_total"
        assert sample_value(families, recoveries, stream="flaky", category="not_found") == 1
        assert sample_value(families, "streamwarden_stream_recovery_seconds_count", stream="flaky") == 1
        assert (
            sample_value(families, "streamwarden_stream_recovery_seconds_bucket", stream="flaky", le="+Inf")
            == 1
        )
        assert families["process_cpu_seconds"].type == "counter"

        assert client.delete("/streams/flaky").status_code == 204
        families = scrape(client)
        streams = {s.labels.get("stream") for f in families.values() for s in f.samples}
        assert "flaky" not in streams and "stay" in streams


# -- the real server, the CLI clients, JSON logs, a corrupt state file -------------------------------
def test_run_serves_the_api_and_the_cli_clients_drive_it(clip: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "site.yaml"
    config.write_text(
        yaml.safe_dump(
            {"api": {"host": "127.0.0.1", "port": port}, "streams": [file_spec("fromconfig", clip)]}
        )
    )
    state = tmp_path / "site.yaml.state.json"
    state.write_text('{"version": 1, "streams": [')
    log_path = tmp_path / "run.log"
    env = {**os.environ, TOKEN_ENV: TOKEN}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamwarden.cli", "run", str(config), "--log-json"],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=env,
        )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/streams", headers=AUTH, timeout=1).status_code == 200
            except httpx.HTTPError:
                assert proc.poll() is None, log_path.read_text()
                return False

        wait_until(ready, 30, interval=0.2, message="API never came up")
        # The corrupt state file was set aside and the config's stream started instead.
        assert [s["id"] for s in httpx.get(f"{url}/streams", headers=AUTH).json()] == ["fromconfig"]
        aside = list(tmp_path.glob("site.yaml.state.json.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_text() == '{"version": 1, "streams": ['
        assert not state.exists()

        runner = CliRunner()
        spec_file = tmp_path / "new.json"
        spec_file.write_text(json.dumps(file_spec("added", clip)))
        common = ["--url", url]
        result = runner.invoke(cli_app, ["add", str(spec_file), *common], env={TOKEN_ENV: TOKEN})
        assert result.exit_code == EXIT_OK, result.output
        assert "added added" in result.output
        assert stat.S_IMODE(state.stat().st_mode) == 0o600  # written by the API change

        result = runner.invoke(cli_app, ["add", str(spec_file), *common], env={TOKEN_ENV: TOKEN})
        assert result.exit_code == EXIT_API and "409" in result.output and "id" in result.output

        wait_until(lambda: httpx.get(f"{url}/streams/added", headers=AUTH).json()["state"] == "PLAYING", 10)
        result = runner.invoke(cli_app, ["status", *common], env={TOKEN_ENV: TOKEN, "COLUMNS": "200"})
        assert result.exit_code == EXIT_OK, result.output
        assert "fromconfig" in result.output and "added" in result.output and "PLAYING" in result.output

        result = runner.invoke(cli_app, ["status", *common], env={TOKEN_ENV: "wrong"})
        assert result.exit_code == EXIT_API and "401" in result.output

        result = runner.invoke(cli_app, ["resume", "added", *common], env={TOKEN_ENV: TOKEN})
        assert result.exit_code == EXIT_OK, result.output
        result = runner.invoke(cli_app, ["remove", "added", *common], env={TOKEN_ENV: TOKEN})
        assert result.exit_code == EXIT_OK and "removed added" in result.output
        result = runner.invoke(cli_app, ["remove", "added", *common], env={TOKEN_ENV: TOKEN})
        assert result.exit_code == EXIT_API and "404" in result.output
        saved = json.loads(state.read_text())
        assert [s["spec"]["id"] for s in saved["streams"]] == ["fromconfig"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert records, "no log output"
    assert all({"time", "level", "logger", "stream", "message"} <= set(r) for r in records)
    assert any(r["stream"] == "fromconfig" and "PLAYING" in r["message"] for r in records), records
    assert any("corrupt" in r["message"] and r["level"] == "ERROR" for r in records)
    assert any(r["logger"].startswith("uvicorn") for r in records)  # the server's records too
    assert TOKEN not in log_path.read_text()


def test_client_commands_report_an_unreachable_api(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli_app, ["status", "--url", url, "--timeout", "2"])
    assert result.exit_code == EXIT_API and "cannot reach" in result.output
    missing = CliRunner().invoke(cli_app, ["add", str(tmp_path / "none.yaml"), "--url", url])
    assert missing.exit_code == 2 and "cannot read" in missing.output


def test_readyz_and_calls_report_a_stopped_engine(engine: Engine) -> None:
    """/readyz answers while the engine loop runs, 503 once it is stopped."""
    with client_for(engine) as client:
        assert client.get("/readyz").json() == {"status": "ready"}
        engine.stop()
        started = time.monotonic()
        assert_problem(client.get("/readyz"), 503)
        assert_problem(client.get("/streams"), 503)
        assert time.monotonic() - started < 3
