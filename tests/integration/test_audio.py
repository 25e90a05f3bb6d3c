"""Audio carried through, untouched: file and RTSP sources into recordings and the RTSP re-serve.

Judged by ffprobe/ffmpeg as outside tools: each recorded segment must hold a decodable audio
stream of the source's codec, about as long as its video; the served stream must offer it too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamwarden.config import (
    BackoffConfig,
    RecordingConfig,
    RtspServerConfig,
    StreamSpec,
    parse_stream_spec,
)
from streamwarden.engine import Engine
from streamwarden.policy.backoff import JitterMode
from streamwarden.recording.index import SegmentRecord
from streamwarden.state import StreamState
from tests.conftest import CameraFactory
from tests.helpers import count_frames, count_packets, ffprobe_json, wait_until
from tests.integration.conftest import FAST, wait_state

pytestmark = pytest.mark.integration

# Fast recorder retries, as in test_recording.py; waits are generous for two busy cores.
RECORDING = RecordingConfig(
    check_interval_seconds=0.3,
    retry=BackoffConfig(initial_seconds=0.3, multiplier=2, max_seconds=1.0, jitter=JitterMode.NONE),
)
WAIT = 20.0  # seconds: the bound of every wait below (they return as soon as the condition holds)
AAC_FRAME = 1024 / 48000  # seconds of audio per AAC packet at 48 kHz
G711_PACKET = 0.02  # the test camera sends 20 ms of G.711 per RTP packet (stored as such)


@pytest.fixture
def rec_engine(gst_init: None) -> Iterator[Engine]:
    with Engine(recording=RECORDING) as running:
        yield running


@pytest.fixture
def serve_engine(gst_init: None) -> Iterator[Engine]:
    """An engine that records and serves over RTSP (127.0.0.1, a free port)."""
    with Engine(
        recording=RECORDING,
        rtsp_server=RtspServerConfig(host="127.0.0.1", port=0),
    ) as running:
        yield running


def served_url(engine: Engine, stream_id: str) -> str:
    return f"rtsp://127.0.0.1:{engine.rtsp_port}/{stream_id}"


def spec_for(stream_id: str, source: dict[str, Any], **extra: Any) -> StreamSpec:
    return parse_stream_spec({"id": stream_id, "source": source, "recovery": FAST, **extra})


def recorder(engine: Engine, stream_id: str) -> dict[str, Any]:
    status: dict[str, Any] | None = engine.info(stream_id)["recorder"]
    assert status is not None
    return status


def finish(engine: Engine, *stream_ids: str) -> None:
    """Stop the streams (segments close cleanly) and wait until every file is indexed."""
    for stream_id in stream_ids:
        engine.stop_stream(stream_id)
    wait_until(lambda: engine.pending_disposals() == 0, WAIT, message="recording not finalised")
    assert engine.recording.flush(15)


def decode_errors(path: str, stream: str = "a:0") -> list[str]:
    """What ffmpeg complains about while decoding one stream of ``path`` to nothing."""
    proc = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-i",
            path,
            "-map",
            f"0:{stream}",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.strip()]


def read_served(url: str, target: Path, seconds: float = 4.0) -> Path:
    """ffmpeg as an RTSP client over TCP: ``seconds`` of every stream copied into ``target``."""
    proc = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-rtsp_transport", "tcp", "-i", url,
         "-t", str(seconds), "-map", "0", "-c", "copy", "-y", str(target)],
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return target


def check_served(url: str, target: Path, codec: str, rate: int, packet_seconds: float | None) -> None:
    """The served stream offers ``codec`` audio besides its video, and a client receives it."""
    streams = {s["codec_type"]: s for s in ffprobe_json(url)["streams"]}
    assert set(streams) == {"video", "audio"}, streams
    assert streams["video"]["codec_name"] == "h264"
    assert (streams["audio"]["codec_name"], int(streams["audio"]["sample_rate"])) == (codec, rate)
    seconds = 4.0
    read_served(url, target, seconds)
    packets = count_packets(str(target))
    if packet_seconds is not None:  # about all of it: a GOP's worth may go before the first keyframe
        assert seconds - 1.5 <= packets * packet_seconds <= seconds + 0.5, packets
    else:
        assert packets > 0
    assert count_frames(str(target)) >= (seconds - 1.5) * 25
    assert decode_errors(str(target)) == []


def check_segment(segment: SegmentRecord, codec: str, packet_seconds: float | None) -> dict[str, Any]:
    """The segment has its video and one playable audio stream of ``codec`` spanning the video."""
    info = ffprobe_json(segment.path)
    kinds = {s["codec_type"]: s for s in info["streams"]}
    assert set(kinds) == {"video", "audio"}, info["streams"]
    assert kinds["video"]["codec_name"] == "h264"
    audio: dict[str, Any] = kinds["audio"]
    assert audio["codec_name"] == codec, audio
    assert count_frames(segment.path) == segment.frames  # frames stay video frames
    packets = count_packets(segment.path)
    duration = float(info["format"]["duration"])
    if packet_seconds is not None:
        # Every packet is one codec frame: together they cover the segment, give or take a GOP edge.
        assert packets * packet_seconds == pytest.approx(duration, abs=0.3), (segment, packets)
    else:
        assert packets > 0
    assert decode_errors(segment.path) == []
    return audio


def test_file_with_aac_records_audio_in_mkv_and_mp4(
    rec_engine: Engine, h264_aac_mp4: Path, tmp_path: Path
) -> None:
    ids = {"amkv": "mkv", "amp4": "mp4"}
    for stream_id, fmt in ids.items():
        record = {"dir": str(tmp_path / "rec"), "format": fmt, "segment_seconds": 2}
        rec_engine.add_stream(spec_for(stream_id, {"type": "file", "path": str(h264_aac_mp4)}, record=record))
    wait_until(
        lambda: all(recorder(rec_engine, i)["segments_written"] >= 2 for i in ids),
        WAIT,
        message="no rotation",
    )
    finish(rec_engine, *ids)
    for stream_id, fmt in ids.items():
        segments = rec_engine.segments(stream_id)
        assert len(segments) >= 3, segments
        for segment in segments:
            assert Path(segment.path).suffix == f".{fmt}"
            audio = check_segment(segment, "aac", AAC_FRAME)
            assert (audio["sample_rate"], audio["channels"]) == ("48000", 2)
        assert recorder(rec_engine, stream_id)["frames_dropped"] == 0


def test_repair_of_a_cut_off_segment_keeps_its_audio(clip_dir: Path, tmp_path: Path) -> None:
    from streamwarden.media.clip import ensure_test_clip
    from streamwarden.media.segments import remux

    whole = ensure_test_clip(clip_dir / "h264-aac.mkv", seconds=3.0, audio=True)
    cut = tmp_path / "cut.part.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])  # as a SIGKILL leaves an unfinished segment
    for fmt in ("mkv", "mp4"):
        target = tmp_path / f"fixed.{fmt}"
        copied = remux(cut, target, fmt)
        assert copied.frames > 25, copied
        streams = {s["codec_type"]: s["codec_name"] for s in ffprobe_json(str(target))["streams"]}
        assert streams == {"video": "h264", "audio": "aac"}, streams
        assert count_packets(str(target)) > 40
        assert decode_errors(str(target)) == []


def test_file_with_aac_is_served_over_rtsp_with_its_audio(
    serve_engine: Engine, h264_aac_mp4: Path, tmp_path: Path
) -> None:
    serve_engine.add_stream(spec_for("clip", {"type": "file", "path": str(h264_aac_mp4)}, serve=True))
    wait_state(serve_engine, "clip", StreamState.PLAYING, WAIT)
    check_served(served_url(serve_engine, "clip"), tmp_path / "client.mkv", "aac", 48000, AAC_FRAME)
    status = serve_engine.info("clip")["server"]
    assert status["audio_codec"] == "aac" and status["audio_frames_sent"] > 0, status


def camera_source(uri: str) -> dict[str, Any]:
    return {"type": "rtsp", "uri": uri, "transport": "tcp", "connect_timeout_seconds": 3}


def record_and_serve(engine: Engine, stream_ids: dict[str, str], uri: str, tmp_path: Path) -> None:
    """One stream per format from the same camera, each recorded in 2 s segments and served."""
    for stream_id, fmt in stream_ids.items():
        record = {"dir": str(tmp_path / "rec"), "format": fmt, "segment_seconds": 2}
        engine.add_stream(spec_for(stream_id, camera_source(uri), record=record, serve=True))
    for stream_id in stream_ids:
        wait_state(engine, stream_id, StreamState.PLAYING, WAIT)


def test_rtsp_camera_with_aac_is_recorded_and_served_with_its_audio(
    serve_engine: Engine, camera: CameraFactory, tmp_path: Path
) -> None:
    cam = camera(audio="aac")
    record_and_serve(serve_engine, {"cam": "mkv"}, cam.url(), tmp_path)
    check_served(served_url(serve_engine, "cam"), tmp_path / "client.mkv", "aac", 48000, AAC_FRAME)
    wait_until(lambda: recorder(serve_engine, "cam")["segments_written"] >= 2, WAIT, message="no rotation")
    finish(serve_engine, "cam")
    segments = serve_engine.segments("cam")
    assert len(segments) >= 3, segments
    for segment in segments:
        audio = check_segment(segment, "aac", AAC_FRAME)
        assert (audio["sample_rate"], audio["channels"]) == ("48000", 1)


def test_rtsp_camera_with_g711_is_recorded_in_mkv_and_mp4_and_served(
    serve_engine: Engine, camera: CameraFactory, tmp_path: Path
) -> None:
    cam = camera(audio="pcmu")
    ids = {"g711mkv": "mkv", "g711mp4": "mp4"}
    record_and_serve(serve_engine, ids, cam.url(), tmp_path)
    check_served(served_url(serve_engine, "g711mkv"), tmp_path / "client.mkv", "pcm_mulaw", 8000, G711_PACKET)
    wait_until(
        lambda: all(recorder(serve_engine, i)["segments_written"] >= 2 for i in ids),
        WAIT,
        message="no rotation",
    )
    finish(serve_engine, *ids)
    for stream_id, fmt in ids.items():
        segments = serve_engine.segments(stream_id)
        assert len(segments) >= 3, segments
        for segment in segments:
            assert Path(segment.path).suffix == f".{fmt}"
            audio = check_segment(segment, "pcm_mulaw", G711_PACKET)
            assert (audio["sample_rate"], audio["channels"]) == ("8000", 1)
        if fmt == "mp4":  # ISO MP4 has no G.711: the recorder wrote QuickTime (qtmux)
            assert Path(segments[0].path).read_bytes()[4:12] == b"ftypqt  "


# -- audio trouble costs the audio only -----------------------------------------------------------
def test_audio_that_stops_is_dropped_and_recording_goes_on_with_video(
    serve_engine: Engine, camera: CameraFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec_engine = serve_engine
    cam = camera(audio="aac")
    record = {"dir": str(tmp_path / "rec"), "format": "mkv", "segment_seconds": 2}
    rec_engine.add_stream(spec_for("mute", camera_source(cam.url()), record=record, serve=True))
    wait_until(lambda: recorder(rec_engine, "mute")["segments_written"] >= 1, WAIT, message="not recording")
    cam.mute_audio()  # no more audio packets, no BYE: rtspsrc says nothing
    dropped = "[mute] audio dropped: no audio for"
    wait_until(lambda: dropped in caplog.text, WAIT, message="the stopped audio was not noticed")
    written = recorder(rec_engine, "mute")["segments_written"]
    # Without the drop splitmuxsink would wait for the audio for ever: nothing more written.
    wait_until(
        lambda: recorder(rec_engine, "mute")["segments_written"] >= written + 2,
        WAIT,
        message="recording stalled",
    )
    health = rec_engine.health("mute")
    assert rec_engine.state("mute") == StreamState.PLAYING
    assert health.attempts_total == 1 and health.errors_total == 0, health  # the ingest never failed
    assert rec_engine.info("mute")["server"]["audio_codec"] is None  # new clients: video only
    streams = ffprobe_json(served_url(rec_engine, "mute"))["streams"]
    assert [s["codec_type"] for s in streams] == ["video"], streams
    finish(rec_engine, "mute")
    segments = rec_engine.segments("mute")
    for segment in segments:
        assert count_frames(segment.path) == segment.frames > 0
    assert count_packets(segments[0].path) > 0  # before the mute: with audio
    assert recorder(rec_engine, "mute")["frames_dropped"] == 0


def test_disk_full_with_audio_stops_only_the_recorder(
    rec_engine: Engine, h264_aac_mp4: Path, tmp_path: Path
) -> None:
    import os

    from tests.integration.test_recording import small_filesystem

    small = tmp_path / "small"
    with small_filesystem(small, 512) as mounted:
        if not mounted:
            pytest.skip("needs a small tmpfs (mount not allowed here)")
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        (small / "ballast").write_bytes(b"\0" * (free - 60_000))  # about three seconds of the clip
        record = {"dir": str(small), "format": "mkv", "segment_seconds": 1, "min_free_bytes": 0}
        rec_engine.add_stream(spec_for("full", {"type": "file", "path": str(h264_aac_mp4)}, record=record))
        wait_until(
            lambda: recorder(rec_engine, "full")["state"] == "error", WAIT, message="disk full not seen"
        )
        frames = rec_engine.health("full").frames_total
        wait_until(lambda: recorder(rec_engine, "full")["errors_total"] >= 2, WAIT, message="no retry")
        health = rec_engine.health("full")
        assert rec_engine.state("full") == StreamState.PLAYING
        assert health.attempts_total == 1 and health.errors_total == 0, health  # the ingest never failed
        assert health.frames_total > frames
        (small / "ballast").unlink()
        written = recorder(rec_engine, "full")["segments_written"]
        wait_until(
            lambda: recorder(rec_engine, "full")["segments_written"] >= written + 2, WAIT, message="no resume"
        )
        finish(rec_engine, "full")
        last = rec_engine.segments("full")[-1]
        check_segment(last, "aac", AAC_FRAME)


# -- recording restarted at runtime, codec change across reconnects -------------------------------
def test_recording_stopped_and_restarted_at_runtime_keeps_its_audio(
    rec_engine: Engine, h264_aac_mp4: Path, tmp_path: Path
) -> None:
    record = {"dir": str(tmp_path / "rec"), "format": "mp4", "segment_seconds": 30}
    rec_engine.add_stream(spec_for("live", {"type": "file", "path": str(h264_aac_mp4)}, record=record))
    wait_until(lambda: recorder(rec_engine, "live")["frames_in"] >= 40, WAIT, message="not recording")
    rec_engine.stop_recording("live")  # both tracks get EOS: splitmuxsink closes the file
    wait_until(lambda: len(rec_engine.segments("live")) == 1, WAIT, message="segment not closed on stop")
    rec_engine.start_recording("live")  # into the running pipeline, audio pad first
    wait_until(lambda: recorder(rec_engine, "live")["frames_in"] >= 100, WAIT, message="did not restart")
    finish(rec_engine, "live")
    assert rec_engine.health("live").attempts_total == 1  # the ingest never rebuilt
    first, second = rec_engine.segments("live")
    for segment in (first, second):
        assert segment.close_reason == "stopped"
        check_segment(segment, "aac", AAC_FRAME)


def test_audio_codec_change_across_reconnects_closes_served_clients(
    serve_engine: Engine, camera: CameraFactory, tmp_path: Path
) -> None:
    cam = camera(audio="aac")
    record_and_serve(serve_engine, {"cam": "mkv"}, cam.url(), tmp_path)
    url = served_url(serve_engine, "cam")
    client = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-rtsp_transport", "tcp", "-i", url,
         "-map", "0", "-c", "copy", "-f", "null", "-"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: serve_engine.info("cam")["server"]["clients"] == 1, WAIT, message="no client")
        cam.restart(audio="pcmu")  # same camera, its audio now G.711: the SDP the client has is wrong
        client.wait(WAIT)  # closed by the server, as for a video codec change
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
    status = serve_engine.info("cam")["server"]
    assert status["codec_changes"] == 1 and status["codec"] == "h264", status
    check_served(url, tmp_path / "client.mkv", "pcm_mulaw", 8000, G711_PACKET)  # a new client: new SDP
    wait_until(lambda: recorder(serve_engine, "cam")["segments_written"] >= 2, WAIT, message="not recording")
    finish(serve_engine, "cam")
    codecs = {ffprobe_json(s.path)["streams"][1]["codec_name"] for s in serve_engine.segments("cam")}
    assert codecs == {"aac", "pcm_mulaw"}, codecs  # a new segment per attempt, each with its audio


def test_audio_attempts_are_freed(
    serve_engine: Engine, camera: CameraFactory, h264_aac_mp4: Path, tmp_path: Path
) -> None:
    """Added and removed again and again, recorded and served streams with audio leave nothing."""
    from tests.integration.test_chaos_churn import _cycle, _live_pipelines, _sockets

    cam = camera(audio="aac")
    record = {"dir": str(tmp_path / "rec"), "format": "mkv", "segment_seconds": 10}
    specs = [
        spec_for("clip", {"type": "file", "path": str(h264_aac_mp4)}, record=record, serve=True),
        spec_for("cam", camera_source(cam.url()), record=record, serve=True),
    ]
    _cycle(serve_engine, specs, 1, dwell=1.5)  # warm-up: GStreamer's lazily made descriptors
    sockets = _sockets()
    _cycle(serve_engine, specs, 3, dwell=1.5)
    assert _live_pipelines() == 0
    assert _sockets() <= sockets
