"""The test media tooling, judged by an independent client (ffprobe/ffmpeg), not by our own code."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamwarden.testing.camera import CameraError, CameraProcess, free_port
from tests.conftest import CLIP_FRAMES, CLIP_HEIGHT, CLIP_WIDTH, CameraFactory
from tests.helpers import FfprobeError, count_frames, ffprobe_json, wait_until

pytestmark = pytest.mark.integration


def _video_stream(info: dict[str, object]) -> dict[str, object]:
    streams = info["streams"]
    assert isinstance(streams, list)
    video = [s for s in streams if s.get("codec_type") == "video"]
    assert len(video) == 1, streams
    result: dict[str, object] = video[0]
    return result


def _proc_state(pid: int) -> str:
    """The one-letter state from /proc (T = stopped by SIGSTOP)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def _rtsp_options(port: int, timeout: float) -> bytes:
    """Sends one RTSP OPTIONS and returns what arrives within ``timeout`` (b"" if nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(f"OPTIONS rtsp://127.0.0.1:{port}/cam1 RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
        sock.settimeout(timeout)
        try:
            return sock.recv(4096)
        except TimeoutError:
            return b""


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return _proc_state(pid) == "Z"
    except FileNotFoundError:
        return True


def _client_frames(progress: Path) -> int:
    """The last ``frame=`` count that ffmpeg wrote to its ``-progress`` file."""
    try:
        lines = progress.read_text().splitlines()
    except FileNotFoundError:
        return 0
    counts = [int(line.split("=", 1)[1]) for line in lines if line.startswith("frame=")]
    return counts[-1] if counts else 0


# -- clips -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "format_name"),
    [("h264_mp4", "mov,mp4,m4a,3gp,3g2,mj2"), ("h264_mkv", "matroska,webm"), ("h264_ts", "mpegts")],
)
def test_clip_is_camera_like_h264(request: pytest.FixtureRequest, fixture: str, format_name: str) -> None:
    path: Path = request.getfixturevalue(fixture)
    info = ffprobe_json(str(path))
    assert info["format"]["format_name"] == format_name
    video = _video_stream(info)
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", CLIP_WIDTH, CLIP_HEIGHT)
    assert video["pix_fmt"] == "yuv420p"  # not x264enc's default High 4:4:4 10-bit
    assert video["has_b_frames"] == 0
    assert video["r_frame_rate"] == "25/1"
    assert abs(count_frames(str(path)) - CLIP_FRAMES) <= 1


def test_clip_h265_with_audio_and_idempotent_ensure(gst_init: None, tmp_path: Path) -> None:
    from streamwarden.media.clip import ensure_test_clip

    path = ensure_test_clip(tmp_path / "h265.mkv", seconds=1.0, codec="h265", audio=True)
    info = ffprobe_json(str(path))
    codecs = sorted(s["codec_name"] for s in info["streams"])
    assert codecs == ["aac", "hevc"]
    assert count_frames(str(path)) == 25
    assert not list(tmp_path.glob(".*.part")), "temporary file left behind"

    mtime = path.stat().st_mtime_ns
    assert ensure_test_clip(path, seconds=1.0, codec="h265", audio=True) == path
    assert path.stat().st_mtime_ns == mtime, "ensure_test_clip re-encoded an existing clip"


def test_clip_container_override_and_bad_suffix(gst_init: None, tmp_path: Path) -> None:
    from streamwarden.media.clip import make_test_clip

    path = make_test_clip(tmp_path / "stream.bin", seconds=0.4, container="ts")
    assert ffprobe_json(str(path))["format"]["format_name"] == "mpegts"
    with pytest.raises(ValueError, match="container"):
        make_test_clip(tmp_path / "clip.avi", seconds=0.4)


# -- camera ------------------------------------------------------------------------------------


def test_camera_serves_h264(camera: CameraFactory) -> None:
    cam = camera()
    assert cam.ready_seconds is not None and cam.ready_seconds < 10
    video = _video_stream(ffprobe_json(cam.url()))
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert video["pix_fmt"] == "yuv420p"


def test_camera_several_mounts_and_unknown_mount(camera: CameraFactory) -> None:
    cam = camera(mounts=("/cam1", "/cam2"), width=160, height=120)
    video = _video_stream(ffprobe_json(cam.url("/cam2")))
    assert (video["width"], video["height"]) == (160, 120)
    with pytest.raises(FfprobeError, match="404"):
        ffprobe_json(cam.url("/nope"))


def test_camera_basic_auth(camera: CameraFactory) -> None:
    cam = camera(user="admin", password="s3cr:t/pw")  # characters that need URL quoting
    with pytest.raises(FfprobeError, match="401"):
        ffprobe_json(cam.url(with_credentials=False))
    wrong = cam.url(with_credentials=False).replace("rtsp://", "rtsp://admin:wrong@")
    with pytest.raises(FfprobeError, match="401"):
        ffprobe_json(wrong)
    video = _video_stream(ffprobe_json(cam.url()))
    assert video["codec_name"] == "h264"


def test_camera_restarts_on_same_port_after_sigkill(camera: CameraFactory, tmp_path: Path) -> None:
    """SIGKILL with a client streaming, then the same port again at once (as a rebooted camera)."""
    cam = camera()
    progress = tmp_path / "progress.txt"
    source = ["-rtsp_transport", "tcp", "-i", cam.url()]
    sink = ["-stats_period", "0.2", "-progress", str(progress), "-c", "copy", "-f", "null", "-"]
    client = subprocess.Popen(
        ["ffmpeg", "-v", "error", *source, *sink],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _client_frames(progress) > 5, 15, message="the client received no frames")
        old_pid = cam.pid
        cam.kill()
        assert not cam.running
        with pytest.raises(FfprobeError):
            ffprobe_json(cam.url(), timeout=10)  # nobody listens now

        started = time.monotonic()
        cam.restart()
        assert time.monotonic() - started < 5
        assert cam.running and cam.pid != old_pid
        video = _video_stream(ffprobe_json(cam.url()))
        assert (video["codec_name"], video["width"]) == ("h264", 320)
        client.wait(timeout=10)  # the old client saw the connection close and gave up
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=5)


def test_camera_binds_over_time_wait() -> None:
    """gst-rtsp-server binds with SO_REUSEADDR, so a TIME_WAIT left by a previous server on the port
    does not stop a restarted camera (a plain bind fails here, which proves the state was there)."""
    port = free_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the previous camera did
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
            conn, _ = listener.accept()
            conn.close()  # the server side closes first, so it is the side left in TIME_WAIT
            client.settimeout(2)
            assert client.recv(1) == b""
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))

    cam = CameraProcess(port)
    try:
        cam.start(timeout=10)
        assert _rtsp_options(port, 5).startswith(b"RTSP/1.0 200")
    finally:
        cam.close()


def test_camera_restart_with_changes(camera: CameraFactory) -> None:
    cam = camera()
    port = cam.port
    cam.restart(width=640, height=480, codec="h265")
    assert cam.port == port
    video = _video_stream(ffprobe_json(cam.url()))
    assert (video["codec_name"], video["width"], video["height"]) == ("hevc", 640, 480)
    with pytest.raises(TypeError, match="port"):
        cam.restart(port=port + 1)


def test_camera_pause_is_a_silent_stall(camera: CameraFactory) -> None:
    cam = camera()
    assert cam.pid is not None
    assert _rtsp_options(cam.port, 5).startswith(b"RTSP/1.0 200")
    cam.pause()
    try:
        assert _proc_state(cam.pid) == "T"
        # The kernel still accepts the connection; the server just never answers.
        assert _rtsp_options(cam.port, 0.5) == b""
    finally:
        cam.resume()
    assert cam.running
    assert _rtsp_options(cam.port, 5).startswith(b"RTSP/1.0 200")


def test_camera_stop_is_clean(camera: CameraFactory) -> None:
    cam = camera()
    proc = cam._proc
    assert proc is not None
    cam.stop()
    assert not cam.running
    assert proc.returncode == 0, cam.stderr_tail()
    assert "exiting" in cam.stderr_tail()


def test_camera_port_in_use_fails_with_reason(camera: CameraFactory) -> None:
    cam = camera()
    second = CameraProcess(cam.port)
    try:
        with pytest.raises(CameraError, match="cannot listen"):
            second.start(timeout=10)
        assert not second.running
    finally:
        second.close()


def test_camera_serves_clip(camera: CameraFactory, h264_mp4: Path) -> None:
    cam = camera(clip=h264_mp4)
    video = _video_stream(ffprobe_json(cam.url()))
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", CLIP_WIDTH, CLIP_HEIGHT)


def test_camera_exits_when_its_parent_dies(tmp_path: Path) -> None:
    """A test runner killed mid-test must not leave cameras behind: the child watches its parent."""
    script = (
        "import sys, time\n"
        "from streamwarden.testing.camera import CameraProcess, free_port\n"
        "cam = CameraProcess(free_port())\n"
        "cam.start()\n"
        "print(cam.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the camera log it cannot clean up lands here
    )
    try:
        assert parent.stdout is not None
        camera_pid = int(parent.stdout.readline())  # bounded: the parent's start() times out in 15 s
        assert not _gone(camera_pid)
    finally:
        parent.kill()
        parent.wait(timeout=5)
    try:
        wait_until(lambda: _gone(camera_pid), 5, message="the orphaned camera kept running")
    finally:
        if not _gone(camera_pid):
            os.kill(camera_pid, signal.SIGKILL)
