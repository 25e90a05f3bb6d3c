"""The engine with looping file sources: seamless loops, file faults, recording."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streamwarden.engine import Engine
from streamwarden.media.clip import ensure_test_clip
from streamwarden.state import StreamState
from tests.helpers import count_frames, ffprobe_json, wait_until
from tests.integration.conftest import file_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def one_second_clip(tmp_path_factory: pytest.TempPathFactory, gst_init: None) -> Path:
    return ensure_test_clip(tmp_path_factory.mktemp("short") / "short.mp4", seconds=1.0)


def test_file_loops_seamlessly_through_the_engine(engine: Engine, one_second_clip: Path) -> None:
    engine.add_stream(file_spec("loop", one_second_clip))
    # 1 s clip paced to real time: 3.5 s of PLAYING is three wraps.
    wait_until(lambda: engine.health("loop").frames_total >= 25 * 3 + 12, 10, message="frames stopped")
    info = engine.info("loop")
    health = info["health"]
    assert info["state"] == "PLAYING"
    assert health["recoveries_total"] == 0 and health["errors_total"] == 0
    assert health["attempts_total"] == 1
    assert health["max_frame_gap_seconds"] < 0.2, health
    assert 20 <= health["fps"] <= 30, health


def test_deleted_file_is_retried_and_resumes_when_restored(
    engine: Engine, one_second_clip: Path, tmp_path: Path
) -> None:
    path = tmp_path / "vanishing.mp4"
    shutil.copy(one_second_clip, path)
    engine.add_stream(file_spec("vanish", path))
    wait_until(lambda: engine.state("vanish") == StreamState.PLAYING, 10, message="never played")
    hidden = tmp_path / "hidden.mp4"
    path.rename(hidden)
    wait_until(
        lambda: (engine.info("vanish")["last_error"] or {}).get("category") == "not_found",
        10,
        message="missing file not reported as not_found",
    )
    assert engine.state("vanish") in (StreamState.BACKOFF, StreamState.CONNECTING)
    hidden.rename(path)
    wait_until(lambda: engine.state("vanish") == StreamState.PLAYING, 5, message="did not resume")
    assert engine.health("vanish").recoveries_total == 1


def test_garbage_file_is_a_decode_error_and_is_retried(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(b"\x00garbage" * 4096)
    engine.add_stream(file_spec("junk", path))
    wait_until(
        lambda: (engine.info("junk")["last_error"] or {}).get("category") in ("decode", "pipeline"),
        10,
        message=f"garbage not classified: {engine.info('junk')}",
    )
    wait_until(lambda: engine.health("junk").attempts_total >= 3, 10, message="not retried")


def test_minimal_recorder_writes_playable_segments(engine: Engine, h264_mkv: Path, tmp_path: Path) -> None:
    record = {"dir": str(tmp_path / "rec"), "format": "mkv", "segment_seconds": 2}
    engine.add_stream(file_spec("rec", h264_mkv, record=record))
    wait_until(lambda: engine.health("rec").frames_total >= 25 * 5, 15, message="frames stopped")
    engine.remove_stream("rec")
    wait_until(lambda: engine.pending_disposals() == 0, 10, message="recording not finalised")
    segments = sorted((tmp_path / "rec" / "rec").glob("rec-*.mkv"))
    assert len(segments) >= 2, segments
    total = 0
    for segment in segments:
        probe = ffprobe_json(str(segment))
        video = probe["streams"][0]
        assert video["codec_name"] == "h264" and video["width"] == 320
        total += count_frames(str(segment))
    assert total >= 25 * 5 - 30  # all but up to one GOP still queued at the stop


def test_mp4_recorder_segment_is_playable(engine: Engine, h264_mp4: Path, tmp_path: Path) -> None:
    record = {"dir": str(tmp_path / "rec"), "format": "mp4", "segment_seconds": 60}
    engine.add_stream(file_spec("recmp4", h264_mp4, record=record))
    wait_until(lambda: engine.health("recmp4").frames_total >= 50, 10, message="frames stopped")
    engine.remove_stream("recmp4")
    wait_until(lambda: engine.pending_disposals() == 0, 10, message="recording not finalised")
    segments = sorted((tmp_path / "rec" / "recmp4").glob("recmp4-*.mp4"))
    assert len(segments) == 1
    assert ffprobe_json(str(segments[0]))["streams"][0]["codec_name"] == "h264"
    assert count_frames(str(segments[0])) >= 25
