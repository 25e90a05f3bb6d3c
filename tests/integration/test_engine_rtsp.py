"""The engine against a real RTSP camera (a child process the tests kill, freeze and restart)."""

from __future__ import annotations

import itertools
import time

import pytest

from streamwarden.config import parse_stream_spec
from streamwarden.engine import Engine
from streamwarden.state import StreamState
from tests.conftest import CameraFactory
from tests.helpers import wait_until
from tests.integration.conftest import rtsp_spec, wait_state

pytestmark = pytest.mark.integration


def test_kill_and_restart_returns_to_playing_within_backoff_plus_2s(
    engine: Engine, camera: CameraFactory
) -> None:
    cam = camera()
    engine.add_stream(rtsp_spec("cam", cam.url()))
    wait_state(engine, "cam", StreamState.PLAYING, 15)

    killed = time.monotonic()
    cam.kill()
    wait_until(lambda: engine.state("cam") != StreamState.PLAYING, 2.0, message="kill not detected")
    left_playing = next(e for e in engine.events("cam") if e.from_state == StreamState.PLAYING)
    detection = left_playing.monotonic - killed
    wait_until(lambda: engine.info("cam")["backoff_attempts"] >= 2, 10, message="no retries while down")

    cam.start()
    back = time.monotonic()
    # The due delay is at most max_seconds (1 s) here: PLAYING within that + 2 s.
    wait_state(engine, "cam", StreamState.PLAYING, 1.0 + 2.0)
    recovered_after = time.monotonic() - back
    info = engine.info("cam")
    assert info["health"]["recoveries_total"] == 1
    assert info["last_error"]["category"] == "network"
    assert detection < 0.1, f"disconnect detected after {detection:.3f} s"  # bus error latency
    assert recovered_after < 3.0
    states = [e.to_state for e in engine.events("cam")]
    assert StreamState.BACKOFF in states and states[-1] == StreamState.PLAYING


def test_frozen_server_is_stalled_then_recovers(engine: Engine, camera: CameraFactory) -> None:
    cam = camera()
    engine.add_stream(rtsp_spec("cam", cam.url()))
    wait_state(engine, "cam", StreamState.PLAYING, 15)

    frozen = time.monotonic()
    cam.pause()
    try:
        wait_until(
            lambda: any(e.to_state == StreamState.STALLED for e in engine.events("cam")),
            2 + 1.0,
            message="not STALLED within stall_timeout + 1 s",
        )
        stalled_after = (
            next(e for e in engine.events("cam") if e.to_state == StreamState.STALLED).monotonic - frozen
        )
        assert stalled_after <= 3.0
        # The loop stays responsive while the frozen pipeline is being torn down.
        started = time.monotonic()
        engine.state("cam")
        assert time.monotonic() - started < 0.5
        wait_until(lambda: engine.info("cam")["health"]["attempts_total"] >= 2, 10, message="no retry")
    finally:
        cam.resume()
    wait_state(engine, "cam", StreamState.PLAYING, 15)
    info = engine.info("cam")
    assert info["health"]["recoveries_total"] >= 1
    assert info["health"]["errors_by_category"].get("network", 0) >= 1


@pytest.mark.parametrize("transport", ["udp", "auto"])
def test_udp_and_auto_transport_play(engine: Engine, camera: CameraFactory, transport: str) -> None:
    cam = camera()
    engine.add_stream(rtsp_spec("cam", cam.url(), transport=transport))
    wait_state(engine, "cam", StreamState.PLAYING, 15)
    wait_until(lambda: engine.health("cam").frames_total >= 25, 5, message="frames do not flow")


def _last_category(engine: Engine, stream_id: str) -> str | None:
    error = engine.info(stream_id)["last_error"]
    return None if error is None else str(error["category"])


def test_errors_are_classified(engine: Engine, camera: CameraFactory) -> None:
    from streamwarden.testing.camera import free_port

    cam = camera(user="alice", password="right")
    wrong = cam.url().replace("alice:right@", "alice:wrong@")
    assert wrong != cam.url()
    engine.add_stream(rtsp_spec("auth", wrong))
    engine.add_stream(rtsp_spec("closed", f"rtsp://127.0.0.1:{free_port()}/cam1"))
    engine.add_stream(rtsp_spec("missing", cam.url("/nope")))
    engine.add_stream(rtsp_spec("good", cam.url()))
    for stream_id, category in (("auth", "auth"), ("closed", "network"), ("missing", "not_found")):
        wait_until(
            lambda s=stream_id, c=category: _last_category(engine, s) == c,  # type: ignore[misc]
            10,
            message=f"{stream_id}: {engine.info(stream_id)}",
        )
    auth = engine.info("auth")
    assert "credentials" in auth["last_error"]["reason"]
    assert "wrong" not in str(auth) and "right" not in str(engine.info("good")["spec"])
    wait_state(engine, "good", StreamState.PLAYING, 10)


def test_breaker_opens_then_quarantine_then_operator_resume(engine: Engine, camera: CameraFactory) -> None:
    from streamwarden.testing.camera import free_port

    port = free_port()
    spec = parse_stream_spec(
        {
            "id": "dead",
            "source": {"type": "rtsp", "uri": f"rtsp://127.0.0.1:{port}/cam1", "connect_timeout_seconds": 3},
            "recovery": {
                "backoff": {"initial_seconds": 0.05, "max_seconds": 0.1, "jitter": "none"},
                "breaker": {"failure_threshold": 2, "open_seconds": 0.2, "open_multiplier": 1},
                "quarantine": {"trips": 2, "window_seconds": 60, "quarantine_seconds": 600},
            },
        }
    )
    engine.add_stream(spec)
    wait_state(engine, "dead", StreamState.QUARANTINED, 10)
    info = engine.info("dead")
    assert info["quarantine"]["active"] is True and info["quarantine"]["seconds_remaining"] > 500
    assert info["breaker"]["trips"] == 2
    reasons = [e.reason for e in engine.events("dead")]
    assert any("circuit breaker open" in r for r in reasons), reasons
    attempts = info["health"]["attempts_total"]
    # Quarantined: no more attempts while nobody resumes it.
    with pytest.raises(AssertionError):
        wait_until(lambda: engine.health("dead").attempts_total > attempts, 0.6)

    cam = camera()
    engine.update_stream(spec.model_copy(update={"source": rtsp_spec("dead", cam.url()).source}))
    assert engine.state("dead") == StreamState.QUARANTINED  # a new spec does not lift quarantine
    engine.resume("dead")
    wait_state(engine, "dead", StreamState.PLAYING, 10)
    assert engine.info("dead")["quarantine"]["active"] is False


def test_global_reconnect_budget_spreads_a_thundering_herd(gst_init: None, camera: CameraFactory) -> None:
    from streamwarden.config import EngineConfig

    rate = 4.0
    config = EngineConfig.model_validate({"reconnect_budget": {"rate_per_second": rate, "burst": 1}})
    cam = camera(mounts=tuple(f"/m{i}" for i in range(6)))
    with Engine(config) as engine:
        ids = [f"herd{i}" for i in range(6)]
        for index, stream_id in enumerate(ids):
            engine.add_stream(rtsp_spec(stream_id, cam.url(f"/m{index}")))
        wait_until(
            lambda: all(engine.state(i) == StreamState.PLAYING for i in ids), 20, message="herd not playing"
        )
        killed = time.monotonic()
        cam.kill()
        wait_until(
            lambda: sum(engine.health(i).attempts_total for i in ids) >= 2 * len(ids) + 6,
            15,
            message="herd did not retry",
        )
        cam.start()
        wait_until(
            lambda: all(engine.state(i) == StreamState.PLAYING for i in ids), 20, message="herd not back"
        )
        starts = sorted(
            e.monotonic
            for i in ids
            for e in engine.events(i)
            if e.to_state == StreamState.CONNECTING and e.monotonic > killed
        )
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # One token at a time, refilled at 4/s: no two attempts (of any stream) closer than ~1/rate.
    assert len(starts) >= 12
    assert min(gaps) >= 1 / rate - 0.06, gaps


def test_max_attempts_exhausted_fails_the_stream(engine: Engine) -> None:
    from streamwarden.testing.camera import free_port

    spec = parse_stream_spec(
        {
            "id": "doomed",
            "source": {"type": "rtsp", "uri": f"rtsp://127.0.0.1:{free_port()}/x"},
            "recovery": {"backoff": {"initial_seconds": 0.05, "max_seconds": 0.1, "max_attempts": 3}},
        }
    )
    engine.add_stream(spec)
    wait_state(engine, "doomed", StreamState.FAILED, 10)
    info = engine.info("doomed")
    assert "gave up after 3 attempts" in info["reason"]
    assert info["health"]["attempts_total"] == 4  # the first try plus three retries


def test_config_rules_extend_the_classification_table(gst_init: None) -> None:
    from streamwarden.config import EngineConfig
    from streamwarden.testing.camera import free_port

    rule = {
        "name": "refused-means-decommissioned",
        "message": "Could not open resource for reading and writing",
        "category": "network",
        "transience": "fatal",
        "action": "stop",
        "reason": "camera decommissioned",
    }
    config = EngineConfig.model_validate({"error_rules": [rule]})
    with Engine(config) as engine:
        engine.add_stream(rtsp_spec("gone", f"rtsp://127.0.0.1:{free_port()}/x"))
        wait_state(engine, "gone", StreamState.FAILED, 10)
        error = engine.info("gone")["last_error"]
        assert error["reason"] == "camera decommissioned" and error["transience"] == "fatal"
        assert engine.health("gone").attempts_total == 1


def test_connect_timeout_catches_a_server_that_accepts_but_never_answers(engine: Engine) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel accepts; nobody ever answers
    try:
        port = listener.getsockname()[1]
        spec = parse_stream_spec(
            {
                "id": "mute",
                "source": {"type": "rtsp", "uri": f"rtsp://127.0.0.1:{port}/x", "connect_timeout_seconds": 1},
                "recovery": {"backoff": {"initial_seconds": 5, "max_seconds": 5}},
            }
        )
        started = time.monotonic()
        engine.add_stream(spec)
        wait_until(lambda: engine.info("mute")["last_error"] is not None, 4, message="no timeout")
        assert time.monotonic() - started < 2.5
        assert engine.info("mute")["last_error"]["category"] == "network"
    finally:
        listener.close()
