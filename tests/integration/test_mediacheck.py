"""Media sampling: the window analysis on synthetic timestamps, and on a real looping file."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamwarden.engine import Engine
from streamwarden.state import StreamState
from tests.helpers import wait_until
from tests.integration.conftest import file_spec

pytestmark = pytest.mark.integration

MS = 1_000_000


def test_window_analysis_counts_backwards_and_jumps_and_flags(gst_init: None) -> None:
    from streamwarden.media.gst import Gst
    from streamwarden.media.mediacheck import analyze_window

    none = Gst.CLOCK_TIME_NONE
    corrupt, discont = int(Gst.BufferFlags.CORRUPTED), int(Gst.BufferFlags.DISCONT)
    dts = [i * 40 * MS for i in range(20)]
    dts[10] = dts[9] - 5 * MS  # backwards
    dts[15:] = [t + 900 * MS for t in dts[15:]]  # a jump of 0.9 s
    samples = [(none, t, 0, 0) for t in dts]
    samples[3] = (none, samples[3][1], corrupt, 0)
    samples[4] = (none, samples[4][1], discont, 0)
    window = analyze_window(samples, 1.0)
    assert window.frames == 20 and window.nominal_fps == pytest.approx(25.0)
    # One step backwards (-5 ms) and one jump (0.94 s > 3 intervals); the 45 ms step after the
    # backwards one is within bounds.
    assert window.timestamp_errors == 2, window
    assert (window.corrupt_frames, window.discont_flags) == (1, 1)
    clean = analyze_window([(t, none, 0, t + 7 * MS) for t in range(0, 25 * 40 * MS, 40 * MS)], 1.0)
    assert clean.timestamp_errors == 0 and clean.nominal_fps == pytest.approx(25.0)
    assert clean.offset_ms == pytest.approx(7.0)  # arrival - timestamp: what drift compares


def test_audio_arriving_later_than_video_for_the_same_media_time_is_drift(gst_init: None) -> None:
    from streamwarden.config import DegradedConfig
    from streamwarden.health import MediaQuality
    from streamwarden.media.gst import Gst
    from streamwarden.media.mediacheck import analyze_window

    none = Gst.CLOCK_TIME_NONE
    video = analyze_window([(t, none, 0, t + 5 * MS) for t in range(0, 25 * 40 * MS, 40 * MS)], 1.0)
    audio = analyze_window([(t, none, 0, t + 1505 * MS) for t in range(0, 47 * 21 * MS, 21 * MS)], 1.0)
    quality = MediaQuality()
    quality.add_window(video, audio=audio)
    assert quality.av_drift_ms == pytest.approx(1500.0)
    reasons = quality.reasons(DegradedConfig(max_av_drift_ms=1000), 25.0, 0.0, None)
    assert reasons == ["audio/video drift +1500 ms > 1000 ms"]


def test_a_file_with_aac_has_its_audio_video_drift_measured(engine: Engine, h264_aac_mp4: Path) -> None:
    health = {"media_sample_seconds": 1.0, "media_sample_interval_seconds": 1.5}
    engine.add_stream(file_spec("av", h264_aac_mp4, health=health))
    wait_until(
        lambda: engine.info("av")["quality"]["media"]["av_drift_ms"] is not None,
        20,
        message="no audio/video drift measured",
    )
    media = engine.info("av")["quality"]["media"]
    # Both tracks are paced by their own clocksync on one clock: they arrive in step.
    assert abs(media["av_drift_ms"]) < 150, media
    assert engine.state("av") == StreamState.PLAYING


def test_a_looping_file_is_sampled_with_its_nominal_rate_and_no_timestamp_errors(
    engine: Engine, h264_mp4: Path
) -> None:
    health = {"media_sample_seconds": 1.0, "media_sample_interval_seconds": 1.5}
    engine.add_stream(file_spec("loop", h264_mp4, health=health))
    wait_until(
        lambda: engine.info("loop")["quality"]["media"]["sampled_windows_total"] >= 3,
        20,
        message="no sampling windows",
    )
    media = engine.info("loop")["quality"]["media"]
    assert media["nominal_fps"] == pytest.approx(25.0, rel=0.05), media
    assert media["sampled_frames_total"] >= 40, media
    # The clip (3 s) wraps inside these windows: the seamless loop shows no timestamp error.
    assert media["timestamp_errors_total"] == 0 and media["corrupt_frames_total"] == 0, media
    assert engine.state("loop") == StreamState.PLAYING
