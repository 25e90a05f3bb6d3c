"""Engine faults: SIGKILL of ``streamwarden run`` and restart, exceptions raised from real callback
paths (the GLib tick, a GStreamer streaming thread), and a process short of file descriptors."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamwarden.engine import Engine
from streamwarden.health import FrameMeter
from streamwarden.state import StreamState
from tests.conftest import CameraFactory
from tests.helpers import count_frames, ffprobe_json, wait_until
from tests.integration.conftest import FAST, file_spec
from tests.integration.engine_child import EngineChild

pytestmark = pytest.mark.integration

SECRET = "kill-secret-pw"


def _segments(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".mkv", ".mp4"))


def test_sigkill_of_run_and_restart_keeps_api_streams_and_every_recording_plays(
    camera: CameraFactory, h264_mkv: Path, tmp_path: Path
) -> None:
    cam = camera(user="op", password=SECRET)
    rec = tmp_path / "rec"
    record = {"dir": str(rec), "segment_seconds": 2}
    config = {
        "recording": {"min_free_bytes": 0},
        "streams": [
            {"id": "fromconfig", "source": {"type": "file", "path": str(h264_mkv)}, "recovery": FAST}
        ],
    }
    added = [
        {
            "id": "apifile",
            "source": {"type": "file", "path": str(h264_mkv)},
            "record": {**record, "format": "mkv"},
        },
        {
            "id": "apicam",
            "source": {"type": "rtsp", "uri": cam.url(), "transport": "tcp", "connect_timeout_seconds": 3},
            "record": {**record, "format": "mp4"},
            "recovery": FAST,
        },
    ]
    ids = ["fromconfig", "apifile", "apicam"]
    with EngineChild(config, tmp_path) as first:
        for spec in added:
            response = first.api("POST", "/streams", json=spec)
            assert response.status_code == 201, response.text
        first.wait_playing(ids)
        for stream_id in ("apifile", "apicam"):
            wait_until(
                lambda s=stream_id: any(".part." not in p.name for p in (rec / s).glob("*")),  # type: ignore[misc]
                15,
                message=f"{stream_id}: no closed segment before the kill",
            )
        time.sleep(1.0)  # into the next segment
        first.kill()
    parts = [p for p in _segments(rec) if ".part." in p.name]
    assert parts, "a segment was being written at the kill"

    with EngineChild(config, tmp_path) as second:
        assert set(second.streams()) == set(ids)  # the API's additions came back from the state file
        second.wait_playing(ids)
        body = second.api("GET", "/streams").text + second.api("GET", "/metrics").text
        assert SECRET not in body
        time.sleep(1.0)
        assert second.stop() == 0
    files = _segments(rec)
    assert not [p for p in files if ".part." in p.name], files  # leftovers recovered at the restart
    for path in files:
        info = ffprobe_json(str(path))
        assert info["streams"] and info["streams"][0]["codec_name"] == "h264", path
        assert count_frames(str(path)) > 0, path
    assert SECRET not in second.log_text()


@pytest.fixture
def two_files(engine: Engine, h264_mp4: Path, h264_mkv: Path) -> Iterator[Engine]:
    engine.add_stream(file_spec("victim", h264_mp4))
    engine.add_stream(file_spec("bystander", h264_mkv))
    wait_until(
        lambda: all(engine.state(s) == StreamState.PLAYING for s in ("victim", "bystander")),
        10,
        message="not playing",
    )
    yield engine


def _bystander_undisturbed(engine: Engine) -> None:
    health = engine.health("bystander")
    assert engine.state("bystander") == StreamState.PLAYING
    assert health.attempts_total == 1 and health.max_frame_gap_seconds < 0.5, health


def test_exception_in_the_frame_probe_on_a_streaming_thread_fails_only_that_stream(
    two_files: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first-frame probe runs on a GStreamer streaming thread, outside every ``_guarded``: an
    exception there used to reach only sys.excepthook (unlogged, unredacted) and drop the frame."""
    engine = two_files
    hooked: list[Any] = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: hooked.append(args))
    raised: list[bool] = []

    class Exploding(FrameMeter):
        __slots__ = ()

        def first_frame_seen(self) -> None:
            if not raised:
                raised.append(True)
                raise RuntimeError("boom on a streaming thread, rtsp://op:pw-in-probe@cam/x")
            super().first_frame_seen()

    health = engine._streams["victim"].health
    original = health.new_meter

    def exploding_meter() -> FrameMeter:
        meter = original()
        meter.__class__ = Exploding
        return meter

    engine.loop.call_sync(lambda: setattr(health, "new_meter", exploding_meter))
    engine.restart("victim")
    wait_until(lambda: bool(raised), 10, message="the probe never raised")
    wait_until(lambda: engine.health("victim").recoveries_total == 1, 10, message="victim did not recover")
    error = engine.info("victim")["last_error"]
    assert error["category"] == "internal" and "frame probe" in error["detail"]
    assert "pw-in-probe" not in str(engine.info("victim")) + str(engine.events("victim"))
    assert not hooked, hooked
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("first-frame probe failed" in r.getMessage() for r in logged)
    _bystander_undisturbed(engine)


def test_exception_in_the_engine_tick_of_one_stream_fails_only_that_stream(two_files: Engine) -> None:
    """Raised from the GLib timer path (engine tick -> supervisor.tick), not called by the test."""
    engine = two_files
    supervisor = engine._streams["victim"]
    original = supervisor.tick

    def boom() -> None:
        setattr(supervisor, "tick", original)  # noqa: B010 - once
        raise RuntimeError("boom in the tick")

    engine.loop.call_sync(lambda: setattr(supervisor, "tick", boom))
    wait_until(lambda: engine.health("victim").recoveries_total == 1, 10, message="victim did not recover")
    assert engine.info("victim")["last_error"]["category"] == "internal"
    _bystander_undisturbed(engine)


# -- too many open files -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def starved(tmp_path_factory: pytest.TempPathFactory, gst_init: None) -> dict[str, Any]:
    """``streamwarden run`` with RLIMIT_NOFILE=64 and twelve recording streams: ingest fits, the
    recorders run out of descriptors. Observed once, judged by the tests below."""
    from streamwarden.media.clip import ensure_test_clip

    workdir = tmp_path_factory.mktemp("nofile")
    clip = ensure_test_clip(workdir / "clip.mkv", seconds=3.0)
    streams = [
        {
            "id": f"s{i}",
            "source": {"type": "file", "path": str(clip)},
            "record": {"dir": str(workdir / "rec"), "segment_seconds": 2},
            "recovery": FAST,
        }
        for i in range(12)
    ]
    result: dict[str, Any] = {}
    with EngineChild({"recording": {"min_free_bytes": 0}, "streams": streams}, workdir, nofile=64) as child:
        time.sleep(4)
        result["alive"] = child.proc is not None and child.proc.poll() is None
        result["healthz"] = child.api("GET", "/healthz").status_code
        response = child.api("GET", "/streams")
        result["streams_status"] = response.status_code
        result["streams"] = response.json()
        if response.status_code != 200:  # judged below; retried once descriptors may be back
            time.sleep(2)
            result["streams"] = child.api("GET", "/streams").json()
        result["exit"] = child.stop()
        result["log_bytes"] = child.log_path.stat().st_size
        result["log"] = child.log_tail(2000)
        result["full_log"] = child.log_text()[:2_000_000]
    return result


def test_a_process_short_of_file_descriptors_keeps_serving_and_stops_cleanly(starved: dict[str, Any]) -> None:
    assert starved["alive"] and starved["healthz"] == 200
    assert starved["streams_status"] == 200, starved["streams"]
    streams = {s["id"]: s for s in starved["streams"]}
    assert len(streams) == 12
    playing = [s for s, info in streams.items() if info["state"] == "PLAYING"]
    assert playing, streams  # ingest goes on; recorders report their own errors
    assert starved["exit"] == 0, starved["log"]


def test_a_process_short_of_file_descriptors_does_not_flood_its_log(starved: dict[str, Any]) -> None:
    """Regression: bus waits spun on buses made out of descriptors (no GstPoll: timed_pop_filtered
    returns at once with a CRITICAL): 280 MB of log in 10 s. Now ~2 CRITICALs per such bus."""
    assert starved["log_bytes"] < 1_000_000, starved["log_bytes"]
    assert starved["log"].count("gst_bus_timed_pop_filtered") == 0, starved["log"]


def test_a_process_short_of_file_descriptors_reports_it_as_a_resource_error(starved: dict[str, Any]) -> None:
    records = [json.loads(line) for line in starved["full_log"].splitlines() if line.startswith("{")]
    resource = [
        r["message"] for r in records if "failed (resource)" in r["message"] or "resource:" in r["message"]
    ]
    assert resource, [r["message"] for r in records if r["level"] in ("WARNING", "ERROR")]
    # Files that could not be read were kept for a later recovery, never deleted as "empty".
    assert not [r for r in records if "holds no playable frame" in r["message"]]
