"""ServeHub's hand-off rules with real Gst buffers and a fake appsrc (no pipelines, milliseconds)."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration


class FakeAppsrc:
    """Records what the hub pushes; ``level`` stands for appsrc's current-level-buffers."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, Any]] = []
        self.level = 0

    def get_property(self, name: str) -> int:
        assert name == "current-level-buffers"
        return self.level

    def emit(self, signal: str, item: Any) -> Any:
        from gi.repository import Gst

        self.pushed.append((signal, item))
        return Gst.FlowReturn.OK

    def get_clock(self) -> None:
        return None  # not playing: the hub leaves timestamps to appsrc

    def buffers(self) -> list[Any]:
        return [item if signal == "push-buffer" else item.get_buffer() for signal, item in self.pushed]


def frame(keyframe: bool, size: int = 100, pts: int = 1000) -> Any:
    from gi.repository import Gst

    buffer = Gst.Buffer.new_allocate(None, size, None)
    assert buffer is not None
    buffer.pts = buffer.dts = pts
    if not keyframe:
        buffer.set_flags(Gst.BufferFlags.DELTA_UNIT)
    return buffer


def caps(text: str = "video/x-h264,stream-format=avc,alignment=au,width=320,height=240") -> Any:
    from gi.repository import Gst

    return Gst.Caps.from_string(text)


@pytest.fixture
def hub(gst_init: None) -> Any:
    from streamwarden.media.serve import ServeHub

    return ServeHub("cam")


def test_frames_pass_from_the_first_keyframe_with_timestamps_cleared(hub: Any) -> None:
    from gi.repository import Gst

    src = FakeAppsrc()
    hub.add_outlet("m", src)
    attempt = hub.new_attempt()
    hub.push(attempt, frame(False), caps())  # before any keyframe: dropped
    original = frame(True)
    hub.push(attempt, original, caps())
    hub.push(attempt, frame(False), caps())
    pushed = src.buffers()
    # The ingest's own buffer (shared with the recorder) keeps its timestamps.
    assert (original.pts, original.dts) == (1000, 1000)
    assert pushed[0] is not original
    assert len(pushed) == 2
    assert src.pushed[0][0] == "push-sample"  # caps travel with the first buffer
    assert all(b.pts == Gst.CLOCK_TIME_NONE and b.dts == Gst.CLOCK_TIME_NONE for b in pushed)
    assert pushed[0].has_flags(Gst.BufferFlags.DISCONT)
    assert (hub.codec, hub.width, hub.height) == ("h264", 320, 240)


def test_a_new_media_prerolls_on_a_keyframe_and_gets_the_whole_gop_at_its_first_play(hub: Any) -> None:
    attempt = hub.new_attempt()
    for keyframe in (True, False, False, True, False):
        hub.push(attempt, frame(keyframe), caps())
    src = FakeAppsrc()
    hub.add_outlet("late", src)
    assert len(src.buffers()) == 1  # the cached keyframe: enough to preroll
    hub.push(attempt, frame(False, 7), caps())  # before PLAY: held back (it joins the GOP)
    assert len(src.buffers()) == 1
    assert hub.on_play("late", alone=True, outage_hold=False) == 2  # the rest of the GOP
    hub.push(attempt, frame(False), caps())
    sizes = [b.get_size() for b in src.buffers()]
    assert sizes == [100, 100, 7, 100]


def test_a_joiner_waits_for_a_keyframe_unless_alone_or_during_an_outage(hub: Any) -> None:
    src = FakeAppsrc()
    hub.add_outlet("m", src)
    attempt = hub.new_attempt()
    hub.push(attempt, frame(True), caps())
    hub.push(attempt, frame(False), caps())
    assert hub.on_play("m", alone=False, outage_hold=False) == 0  # others watch: no replay
    assert hub.on_play("m", alone=True, outage_hold=False) == 2  # alone: the GOP again
    assert hub.on_play("m", alone=False, outage_hold=True) == 2  # outage: the last picture again
    assert len(src.buffers()) == 6


def test_a_new_attempt_waits_for_a_keyframe_and_stale_attempts_are_ignored(hub: Any) -> None:
    src = FakeAppsrc()
    hub.add_outlet("m", src)
    first = hub.new_attempt()
    hub.push(first, frame(True), caps())
    second = hub.new_attempt()
    hub.push(first, frame(False), caps())  # the old pipeline still draining
    hub.push(second, frame(False), caps())  # new attempt, not yet a keyframe
    assert len(src.buffers()) == 1
    hub.push(second, frame(True), caps())
    assert len(src.buffers()) == 2


def test_a_stuck_media_drops_up_to_the_next_keyframe_and_never_blocks(hub: Any) -> None:
    from streamwarden.media.serve import OUTLET_MAX_QUEUED

    stuck, fine = FakeAppsrc(), FakeAppsrc()
    hub.add_outlet("stuck", stuck)
    hub.add_outlet("fine", fine)
    attempt = hub.new_attempt()
    hub.push(attempt, frame(True), caps())
    stuck.level = OUTLET_MAX_QUEUED
    hub.push(attempt, frame(False), caps())
    stuck.level = 0
    hub.push(attempt, frame(False), caps())  # would not decode: skipped
    hub.push(attempt, frame(True), caps())
    assert len(stuck.buffers()) == 2 and len(fine.buffers()) == 4
    assert hub.snapshot()["frames_dropped"] == 2


def test_codec_change_drops_every_outlet_and_reports_it(gst_init: None) -> None:
    from streamwarden.media.serve import ServeHub

    changes: list[tuple[str, str]] = []
    hub: Any = ServeHub("cam", on_codec_change=lambda _hub, old, new: changes.append((old, new)))
    src = FakeAppsrc()
    hub.add_outlet("m", src)
    attempt = hub.new_attempt()
    hub.push(attempt, frame(True), caps())
    hub.push(attempt, frame(True), caps("video/x-h265,stream-format=hvc1,alignment=au,width=320,height=240"))
    assert changes == [("h264", "h265")]
    assert len(src.buffers()) == 1 and hub.snapshot()["medias"] == 0
    assert hub.codec == "h265"


def test_slate_reaches_outlets_and_live_resumes_at_a_keyframe(hub: Any) -> None:
    src = FakeAppsrc()
    hub.add_outlet("m", src)
    attempt = hub.new_attempt()
    hub.push(attempt, frame(True), caps())
    slate_caps = caps("video/x-h264,stream-format=byte-stream,alignment=au,width=320,height=240")
    assert hub.push_slate(frame(True, 50), slate_caps) == 1
    hub.push(attempt, frame(False), caps())  # refers to frames before the slate: skipped
    hub.push(attempt, frame(True), caps())
    signals = [signal for signal, _ in src.pushed]
    assert signals == ["push-sample", "push-sample", "push-sample"]  # caps switch each time
    assert hub.snapshot()["slate_frames"] == 1


def test_sent_counters_count_per_client(hub: Any) -> None:
    src = FakeAppsrc()
    hub.add_outlet("m", src)
    hub.set_clients({"m": 3})
    attempt = hub.new_attempt()
    hub.push(attempt, frame(True, 1000), caps())
    snapshot = hub.snapshot()
    assert snapshot["clients"] == 3
    assert (snapshot["frames_sent"], snapshot["bytes_sent"]) == (3, 3000)
    assert (snapshot["frames_in"], snapshot["bytes_in"]) == (1, 1000)


AAC = "audio/mpeg,mpegversion=4,stream-format=raw,rate=48000,channels=2,codec_data=(buffer)1190"


def test_audio_joins_with_the_attempts_video_and_primes_a_new_media(hub: Any) -> None:
    from gi.repository import Gst

    live = FakeAppsrc()
    live_audio = FakeAppsrc()
    hub.add_outlet("live", live, live_audio)
    attempt = hub.new_attempt()
    assert hub.wait_for_audio(0) is None  # no audio announced: no waiting
    hub.expect_audio(attempt, "aac")
    hub.push_audio(attempt, frame(True, 10), caps(AAC), 0)  # before the first keyframe: held back
    assert live_audio.pushed == [] and hub.wait_for_audio(0) == "aac"
    hub.push(attempt, frame(True), caps())
    hub.on_play("live", alone=True, outage_hold=False)
    hub.push_audio(attempt, frame(True, 11), caps(AAC), 21 * Gst.MSECOND)
    assert [signal for signal, _ in live_audio.pushed] == ["push-sample"]  # caps with the first
    late_audio = FakeAppsrc()
    hub.add_outlet("late", FakeAppsrc(), late_audio)
    assert [b.get_size() for b in late_audio.buffers()] == [11]  # the newest frame, to preroll on
    assert late_audio.buffers()[0].pts == 0
    assert hub.snapshot()["audio_codec"] == "aac"


def test_an_audio_codec_change_drops_every_outlet_and_reports_it(gst_init: None) -> None:
    from streamwarden.media.serve import ServeHub

    changes: list[tuple[str, str]] = []
    hub: Any = ServeHub("cam", on_codec_change=lambda _hub, old, new: changes.append((old, new)))
    hub.add_outlet("m", FakeAppsrc(), FakeAppsrc())
    first = hub.new_attempt()
    hub.push(first, frame(True), caps())
    hub.push_audio(first, frame(True, 10), caps(AAC), 0)
    second = hub.new_attempt()  # a reconnect: the camera now sends G.711
    assert hub.wait_for_audio(0) is None  # until this attempt's audio flows
    hub.push_audio(second, frame(True, 10), caps("audio/x-mulaw,rate=8000,channels=1"), 0)
    assert changes == [("audio aac 48000 Hz x2", "audio pcmu 8000 Hz x1")]
    assert hub.snapshot()["medias"] == 0 and hub.codec_changes == 1
