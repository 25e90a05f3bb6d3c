"""Isolation: one stream's faults, churn or bugs never disturb the frames of the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamwarden.config import parse_stream_spec
from streamwarden.engine import Engine, StreamExistsError, StreamNotFoundError
from streamwarden.state import StreamState
from tests.conftest import CameraFactory
from tests.helpers import wait_until
from tests.integration.conftest import file_spec, rtsp_spec

pytestmark = pytest.mark.integration

MAX_GAP = 0.5


def _all_playing(engine: Engine, ids: list[str]) -> bool:
    return all(engine.state(i) == StreamState.PLAYING for i in ids)


def _assert_undisturbed(engine: Engine, ids: list[str]) -> None:
    for stream_id in ids:
        health = engine.health(stream_id)
        assert engine.state(stream_id) == StreamState.PLAYING, engine.info(stream_id)
        assert health.max_frame_gap_seconds < MAX_GAP, (stream_id, health)
        assert health.recoveries_total == 0 and health.attempts_total == 1, (stream_id, health)


def test_eight_streams_one_faulted_repeatedly(
    engine: Engine, camera: CameraFactory, h264_mp4: Path, h264_mkv: Path, h264_ts: Path
) -> None:
    steady_cam = camera(mounts=("/a", "/b", "/c"))
    flaky_cam = camera()
    others = [
        file_spec("f1", h264_mp4),
        file_spec("f2", h264_mkv),
        file_spec("f3", h264_ts),
        file_spec("f4", h264_mp4),
        rtsp_spec("r1", steady_cam.url("/a")),
        rtsp_spec("r2", steady_cam.url("/b"), transport="udp"),
        rtsp_spec("r3", steady_cam.url("/c")),
    ]
    for spec in others:
        engine.add_stream(spec)
    engine.add_stream(rtsp_spec("flaky", flaky_cam.url()))
    ids = [s.id for s in others]
    wait_until(lambda: _all_playing(engine, [*ids, "flaky"]), 20, message="not all streams playing")

    for round_ in range(3):
        attempts = engine.health("flaky").attempts_total
        flaky_cam.kill()
        wait_until(lambda: engine.state("flaky") != StreamState.PLAYING, 3, message="kill not seen")
        # Stay down for a few failed attempts: teardowns and rebuilds while the others play.
        wait_until(
            lambda a=attempts: engine.health("flaky").attempts_total >= a + 3,  # type: ignore[misc]
            10,
            message="flaky not retried while down",
        )
        flaky_cam.start()
        wait_until(
            lambda r=round_: engine.health("flaky").recoveries_total >= r + 1,  # type: ignore[misc]
            10,
            message=f"flaky did not recover in round {round_}",
        )
    frames = engine.health("f1").frames_total
    wait_until(lambda: engine.health("f1").frames_total >= frames + 25, 5, message="f1 stopped")
    _assert_undisturbed(engine, ids)


def test_twenty_add_remove_cycles_leave_others_undisturbed(
    engine: Engine, camera: CameraFactory, h264_mp4: Path
) -> None:
    cam = camera()
    engine.add_stream(file_spec("steady-file", h264_mp4))
    engine.add_stream(rtsp_spec("steady-cam", cam.url()))
    wait_until(lambda: _all_playing(engine, ["steady-file", "steady-cam"]), 15, message="not playing")
    for cycle in range(20):
        spec = rtsp_spec("churn", cam.url()) if cycle % 2 else file_spec("churn", h264_mp4)
        engine.add_stream(spec)
        wait_until(lambda: engine.health("churn").frames_total > 0, 10, message=f"cycle {cycle} no frames")
        engine.remove_stream("churn")
    assert "churn" not in engine.stream_ids()
    _assert_undisturbed(engine, ["steady-file", "steady-cam"])


def test_api_errors(engine: Engine, h264_mp4: Path) -> None:
    engine.add_stream(file_spec("one", h264_mp4))
    with pytest.raises(StreamExistsError):
        engine.add_stream(file_spec("one", h264_mp4))
    with pytest.raises(StreamNotFoundError):
        engine.remove_stream("nope")
    with pytest.raises(StreamNotFoundError):
        engine.info("nope")


def test_exception_in_one_stream_callback_fails_only_that_stream(
    engine: Engine, h264_mp4: Path, h264_mkv: Path
) -> None:
    engine.add_stream(file_spec("victim", h264_mp4))
    engine.add_stream(file_spec("bystander", h264_mkv))
    wait_until(lambda: _all_playing(engine, ["victim", "bystander"]), 10, message="not playing")

    def _explode() -> None:
        raise RuntimeError("boom in a stream callback")

    supervisor = engine._streams["victim"]
    engine.loop.call_sync(lambda: supervisor._guarded(_explode))
    assert (engine.info("victim")["last_error"] or {}).get("category") == "internal"
    wait_until(lambda: engine.health("victim").recoveries_total == 1, 10, message="victim did not recover")
    _assert_undisturbed(engine, ["bystander"])


def test_two_engines_in_one_process(gst_init: None, h264_mp4: Path) -> None:
    with Engine(name="first") as first, Engine(name="second") as second:
        first.add_stream(file_spec("same-id", h264_mp4))
        second.add_stream(file_spec("same-id", h264_mp4))
        wait_until(
            lambda: first.health("same-id").frames_total > 25 and second.health("same-id").frames_total > 25,
            10,
            message="both engines should play",
        )
        second.remove_stream("same-id")
        assert first.state("same-id") == StreamState.PLAYING
        assert second.stream_ids() == []


def test_runtime_control(engine: Engine, h264_mp4: Path, h264_mkv: Path) -> None:
    engine.add_stream(file_spec("ctl", h264_mp4))
    wait_until(lambda: engine.state("ctl") == StreamState.PLAYING, 10, message="not playing")
    engine.replace_source(
        "ctl", parse_stream_spec({"id": "x", "source": {"type": "file", "path": str(h264_mkv)}}).source
    )
    wait_until(lambda: engine.health("ctl").attempts_total == 2, 5, message="source not replaced")
    wait_until(lambda: engine.state("ctl") == StreamState.PLAYING, 10, message="not playing after replace")
    assert engine.spec("ctl").source.model_dump()["path"] == str(h264_mkv)
    recovery = engine.spec("ctl").recovery.model_copy(update={"stall_timeout_seconds": 9.0})
    engine.set_recovery("ctl", recovery)
    assert engine.spec("ctl").recovery.stall_timeout_seconds == 9.0
    assert engine.health("ctl").attempts_total == 2  # a policy change needs no new pipeline
    engine.stop_stream("ctl")
    assert engine.state("ctl") == StreamState.STOPPED
    engine.restart("ctl")
    wait_until(lambda: engine.state("ctl") == StreamState.PLAYING, 10, message="not playing after restart")
    counts = engine.transition_counts("ctl")
    assert counts["CONNECTING->PLAYING"] == 3


def test_update_stream_honours_enabled(engine: Engine, h264_mp4: Path) -> None:
    spec = file_spec("toggle", h264_mp4)
    engine.add_stream(spec)
    wait_until(lambda: engine.state("toggle") == StreamState.PLAYING, 10, message="not playing")
    engine.update_stream(spec.model_copy(update={"enabled": False}))
    assert engine.state("toggle") == StreamState.STOPPED
    assert engine.info("toggle")["reason"] == "disabled"
    engine.update_stream(spec)
    wait_until(lambda: engine.state("toggle") == StreamState.PLAYING, 10, message="not re-enabled")
    assert engine.health("toggle").attempts_total == 2
