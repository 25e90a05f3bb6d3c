"""Bus waits out of file descriptors: a bus made under EMFILE has no poll, cannot block in
``timed_pop_filtered`` and drops every message after its sync handler (GStreamer 1.22).

Descriptors are exhausted for real in a child process (never in the test process, whose other
threads would fail at random); in-process tests force the fallback on a healthy bus.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from streamwarden.engine import Engine
from streamwarden.state import StreamState
from tests.conftest import CLIP_FRAMES
from tests.helpers import wait_until
from tests.integration.conftest import file_spec

pytestmark = pytest.mark.integration

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Scans the clip once healthy (plugins loaded), then with every descriptor taken but ``free``.
CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time
    sys.path.insert(0, {src!r})
    from streamwarden.media.segments import scan
    clip, free = {clip!r}, {free}
    assert scan(clip).frames > 0
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    for _ in range(free):
        os.close(held.pop())
    started = time.monotonic()
    checked = scan(clip, timeout=20)
    seconds = time.monotonic() - started
    for fd in held:
        os.close(fd)
    print(json.dumps({{"frames": checked.frames, "error": checked.error,
                      "unreadable": checked.unreadable, "seconds": seconds}}))
    """
)


def _scan_starved(clip: Path, free: int) -> tuple[dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(src=SRC, clip=str(clip), free=free)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_a_scan_on_a_bus_without_poll_finishes_at_once_and_does_not_flood(
    gst_init: None, h264_mkv: Path
) -> None:
    """One descriptor left: filesrc opens the file, the bus gets no poll (it needs two)."""
    result, stderr = _scan_starved(h264_mkv, free=1)
    assert result["frames"] == CLIP_FRAMES and result["error"] is None, result
    assert result["seconds"] < 5, result  # EOS seen through the sync handler, not a 20 s timeout
    assert "gst_bus_timed_pop_filtered" not in stderr  # no spin on the poll-less bus
    assert stderr.count("CRITICAL") <= 2, stderr[-2000:]  # bus creation, and the probe for it


def test_a_scan_that_cannot_open_its_file_is_unreadable_not_empty(gst_init: None, h264_mkv: Path) -> None:
    """No descriptor left: that is no verdict on the file (finalize must not delete it)."""
    result, stderr = _scan_starved(h264_mkv, free=0)
    assert result["frames"] == 0 and result["unreadable"] is True, result
    assert result["seconds"] < 5, result
    assert "gst_bus_timed_pop_filtered" not in stderr


def test_the_sync_handler_path_sees_every_message_and_is_removed(gst_init: None, h264_mkv: Path) -> None:
    from streamwarden.media.buswait import BusWaiter
    from streamwarden.media.gst import Gst

    pipeline = Gst.parse_launch(f"filesrc location={h264_mkv} ! parsebin ! fakesink sync=false async=false")
    bus = pipeline.get_bus()
    assert bus is not None
    try:
        with BusWaiter(bus, Gst.MessageType.EOS | Gst.MessageType.ERROR, can_wait=False) as waiter:
            assert waiter.via_sync_handler
            started = time.monotonic()
            assert waiter.pop(started + 0.2) is None  # not started: nothing comes, the wait is bounded
            assert time.monotonic() - started >= 0.15
            pipeline.set_state(Gst.State.PLAYING)
            message = waiter.pop(time.monotonic() + 10)
            assert message is not None and message.type == Gst.MessageType.EOS
            quiet = time.monotonic()
            assert waiter.pop(quiet + 0.3) is None
            assert 0.25 <= time.monotonic() - quiet < 1.0  # it blocked for the deadline, no more
    finally:
        pipeline.set_state(Gst.State.NULL)
    bus.set_sync_handler(lambda *_: Gst.BusSyncReply.PASS)  # would warn if one were still installed
    bus.set_sync_handler(None)


def test_a_stream_whose_bus_cannot_be_watched_fails_as_a_resource_error(
    engine: Engine, h264_mkv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add_signal_watch on a poll-less bus installs nothing: the attempt would run blind."""
    from streamwarden.media import pipeline

    monkeypatch.setattr(pipeline, "bus_can_wait", lambda _bus: False)
    engine.add_stream(file_spec("blind", h264_mkv))
    wait_until(lambda: engine.info("blind")["last_error"] is not None, 10, message="no failure reported")
    error = engine.info("blind")["last_error"]
    assert error["category"] == "resource" and "too many open files" in error["reason"], error
    monkeypatch.setattr(pipeline, "bus_can_wait", lambda _bus: True)
    wait_until(lambda: engine.state("blind") == StreamState.PLAYING, 10, message="did not recover")


def _header_only_mp4(directory: Path) -> Path:
    """What a SIGKILL leaves right after a rotation: a fragmented MP4's header, no fragment."""
    from streamwarden.media.gst import Gst

    whole = directory / "whole.mp4"
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=50 ! video/x-raw,format=I420,width=160,height=120,framerate=25/1 "
        f"! x264enc key-int-max=25 ! h264parse ! mp4mux fragment-duration=1000 ! filesink location={whole}"
    )
    bus = pipeline.get_bus()
    assert bus is not None
    pipeline.set_state(Gst.State.PLAYING)
    try:
        message = bus.timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
        assert message is not None and message.type == Gst.MessageType.EOS
    finally:
        pipeline.set_state(Gst.State.NULL)
    data, offset = whole.read_bytes(), 0
    while offset + 8 <= len(data) and data[offset + 4 : offset + 8] != b"moof":
        offset += int.from_bytes(data[offset : offset + 4], "big")
    header = directory / "cam-20260101T000000Z.part.mp4"
    header.write_bytes(data[:offset])
    return header


def test_a_header_only_mp4_is_judged_at_once_while_other_pipelines_start(
    gst_init: None, h264_mkv: Path, tmp_path: Path
) -> None:
    """Regression: through parsebin, qtdemux's "no playable streams" posted while parsebin was
    still plugging it was dropped (this test failed 4 runs in 6 that way): the pass waited its
    whole timeout, and so did the reconcile behind it (the SIGKILL test's leftover stayed .part,
    1 run in 8). Our own files are now read with their container's demuxer."""
    import threading

    from streamwarden.media.gst import Gst
    from streamwarden.media.segments import scan

    header = _header_only_mp4(tmp_path)
    results: list[tuple[float, int, str | None]] = []

    def _scans() -> None:
        for _ in range(12):
            started = time.monotonic()
            checked = scan(header, timeout=10)
            results.append((time.monotonic() - started, checked.frames, checked.error))

    others = [
        Gst.parse_launch(f"filesrc location={h264_mkv} ! parsebin ! fakesink sync=false") for _ in range(6)
    ]
    worker = threading.Thread(target=_scans)
    worker.start()
    try:
        for pipeline in others:
            pipeline.set_state(Gst.State.PLAYING)
        worker.join(60)
    finally:
        for pipeline in others:
            pipeline.set_state(Gst.State.NULL)
    assert len(results) == 12, results
    for seconds, frames, error in results:
        assert seconds < 3 and frames == 0 and error is not None and "no playable" in error, results
