"""Churn: streams added and removed while others run leave nothing behind and disturb nobody.

The short version of ``make chaos``'s 1,000 cycles; test_isolation.py's 20 cycles check the other
streams' frames, this checks memory, descriptors, threads and that no pipeline outlives its attempt.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

import pytest

from streamwarden.chaos import run_churn
from streamwarden.engine import Engine
from streamwarden.media.pipeline import StreamPipeline
from streamwarden.testing.camera import free_port
from tests.helpers import count_frames, wait_until
from tests.integration.conftest import file_spec, rtsp_spec

pytestmark = pytest.mark.integration


def test_fifty_add_remove_cycles_leak_nothing_and_disturb_no_other_stream(
    gst_init: None, tmp_path: Path
) -> None:
    result = run_churn(50, tmp_path, seed=7, record_every=0)
    print(f"churn: {result}")
    assert result.rss_growth_kib < 10 * 1024, result
    assert result.fd_growth <= 0, result
    assert result.python_thread_growth <= 0, result
    assert result.max_gap_others < 0.5, result
    assert result.others_recoveries == 0, result
    assert not result.unhandled, result.unhandled


def _sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


def _live_pipelines() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, StreamPipeline))


def _cycle(engine: Engine, specs: list, rounds: int, dwell: float = 0.4) -> None:  # type: ignore[type-arg]
    for _ in range(rounds):
        for spec in specs:
            engine.add_stream(spec)
        time.sleep(dwell)
        for spec in specs:
            engine.remove_stream(spec.id)
    deadline = time.monotonic() + 10
    while engine.pending_disposals() and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.recording.flush(5)
    time.sleep(0.3)


def test_every_attempt_is_freed_playing_failing_or_connecting(engine: Engine, h264_mp4: Path) -> None:
    """Regression: the frame probe's closure held its StreamPipeline, which held the pipeline that
    held the probe: a cycle through C, so every attempt leaked its pipeline and its bus's socket
    pair (2 descriptors) for good. 1,000 reconnects ended in EMFILE."""
    specs = [
        file_spec("playing", h264_mp4),
        rtsp_spec("refused", f"rtsp://127.0.0.1:{free_port()}/x"),  # fails, retried meanwhile
        file_spec("missing", h264_mp4.with_name("no-such-file.mp4")),
    ]
    _cycle(engine, specs, 2)  # warm-up: GStreamer's own lazily made descriptors
    sockets, live = _sockets(), _live_pipelines()
    _cycle(engine, specs, 8)
    assert _live_pipelines() == live == 0
    assert _sockets() <= sockets
    assert _live_elements() == []  # the source bins and their children too (callback cycles)


def _live_elements() -> list[str]:
    from gi.repository import Gst

    gc.collect()
    return [o.get_name() or "?" for o in gc.get_objects() if isinstance(o, Gst.Element)]


def test_each_pass_over_a_looping_file_is_freed(engine: Engine, gst_init: None, tmp_path: Path) -> None:
    """Regression: probes on a pass's demuxer pads held the pass (and so its reader and demuxer)
    strongly: every wrap of every looping file leaked a filesrc, a typefind and a demuxer."""
    from streamwarden.media.clip import ensure_test_clip

    clip = ensure_test_clip(tmp_path / "short.mp4", seconds=0.6, key_int=5)
    engine.add_stream(file_spec("short", clip))
    wait_until(lambda: engine.health("short").frames_total > 90, 15, message="not looping")  # 6 passes
    readers = [name for name in _live_elements() if name.startswith("filesrc")]
    assert len(readers) <= 2, readers  # the current pass, and at most the next one being built


def test_recording_attempts_are_freed_too(engine: Engine, h264_mp4: Path, tmp_path: Path) -> None:
    spec = file_spec("rec", h264_mp4, record={"dir": str(tmp_path / "rec"), "segment_seconds": 10})
    _cycle(engine, [spec], 1, dwell=1.2)
    sockets = _sockets()
    _cycle(engine, [spec], 4, dwell=1.2)
    assert _sockets() <= sockets
    assert _live_pipelines() == 0


def test_re_adding_a_recording_stream_at_once_raises_nothing(
    engine: Engine, h264_mp4: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the re-added stream's new recorder reconciled the directory while the removed
    stream's branch was still closing its last ``.part``, and finalized it under its feet
    (FileNotFoundError in finalize_segment, 'record-maintenance: job failed'). Claims now belong
    to the stream id, shared by every recorder it has had."""
    spec = file_spec("rec", h264_mp4, record={"dir": str(tmp_path / "rec"), "segment_seconds": 10})
    _cycle(engine, [spec], 4, dwell=1.2)
    assert engine.recording.flush(10)
    crashed = [r.getMessage() for r in caplog.records if r.exc_info is not None]
    assert not crashed, crashed
    assert not [r.getMessage() for r in caplog.records if "kept as written" in r.getMessage()]
    assert not list((tmp_path / "rec").rglob("*.part.*"))  # each removal's last segment finalized
    finals = sorted((tmp_path / "rec").rglob("*.mkv"))
    assert len(finals) >= 4, finals
    assert engine.recording._claims == {}  # nothing claimed, nothing held once the streams are gone


@pytest.mark.parametrize("raced", ["scan", "remux"])
def test_finalize_tolerates_a_part_another_job_finalized_meanwhile(
    gst_init: None, h264_mkv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raced: str
) -> None:
    """Two jobs on one part: the other one renames it while this one scans or remuxes it. This
    one must neither raise nor replace the other's file, and leave no temporary behind."""
    import shutil

    from streamwarden.media import recorder_service
    from streamwarden.recording.index import CloseReason, SegmentIndex

    part = tmp_path / "cam-20260101T000000Z.part.mkv"
    shutil.copy(h264_mkv, part)
    index = SegmentIndex(tmp_path / "segments.sqlite3")
    real = getattr(recorder_service, raced)
    won: list[recorder_service.FinalizeResult] = []

    def finalize(clean: bool) -> recorder_service.FinalizeResult:
        return recorder_service.finalize_segment(
            index,
            "cam",
            part,
            fmt="mkv",
            start_time=None,
            reason=CloseReason.ROTATION,
            frames=None,
            clean=clean,
        )

    def racing(*args: Any, **kwargs: Any) -> Any:
        done = real(*args, **kwargs)
        monkeypatch.setattr(recorder_service, raced, real)
        won.append(finalize(clean=True))  # the other job, start to end, while this one is inside
        return done

    monkeypatch.setattr(recorder_service, raced, racing)
    try:
        lost = finalize(clean=raced == "scan")  # clean=False: this job takes the remux path
    finally:
        index.close()
    assert lost.record is None and not lost.invalid
    winner = won[0].record
    assert winner is not None
    assert sorted(p.name for p in tmp_path.glob("cam-*")) == [Path(winner.path).name]
    assert winner.frames == count_frames(winner.path)


def test_tracks_announced_after_dispose_began_attach_no_branch(gst_init: None, h264_mp4: Path) -> None:
    """The source's announcement can already be queued on the loop when dispose() runs: found by
    1,000 churn cycles leaking 1 in ~125 recorder branches (and their pipelines, 2 sockets each)."""
    from streamwarden.health import FrameMeter
    from streamwarden.media.loop import LoopThread
    from streamwarden.media.pipeline import DisposalStats, StreamPipeline

    attached: list[object] = []
    disposed: list[object] = []

    class Branch:
        name = "fake"

        def attach(self, *args: object) -> None:
            attached.append(args)

        def owns(self, _element: object) -> bool:
            return False

        def on_message(self, _message: object) -> None: ...

        def on_error_sync(self) -> None: ...

        def needs_finish(self) -> bool:
            return False

        def finish(self, *_args: object) -> None: ...

        def disposed(self) -> None:
            disposed.append(self)

    loop = LoopThread("dispose-race")
    loop.start()
    try:
        spec = file_spec("race", h264_mp4)

        def build() -> StreamPipeline:
            return StreamPipeline(
                spec,
                loop=loop,
                meter=FrameMeter(),
                on_first_frame=lambda: None,
                on_failure=lambda _report: None,
                branches=[Branch()],
            )

        pipeline = loop.call(build).result(5)
        loop.call(lambda: pipeline.dispose(DisposalStats(), 5.0)).result(5)
        loop.call(lambda: pipeline._tracks_known(None)).result(5)
        wait_until(lambda: bool(disposed), 10, message="never disposed")
        assert attached == []
    finally:
        loop.stop()
