"""The engine's RTSP server, judged by ffprobe/ffmpeg as independent clients.

Every server listens on 127.0.0.1 on a free port; every ffmpeg/ffprobe is bounded by a timeout
and killed at the end; every engine is stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streamwarden.config import RtspServerConfig, StreamSpec, parse_stream_spec
from streamwarden.engine import Engine
from streamwarden.state import StreamState
from tests.conftest import CameraFactory
from tests.helpers import FfprobeError, wait_until
from tests.integration.conftest import FAST, wait_state

pytestmark = pytest.mark.integration

MAX_GAP = 0.5
EngineFactory = Callable[..., Engine]


# -- helpers ----------------------------------------------------------------------------------------
@dataclass
class FfmpegClient:
    """``ffmpeg -i URL -c copy -f framecrc -``: the arrival time and DTS of every frame it gets."""

    url: str
    transport: str = "tcp"
    seconds: float | None = None
    input_args: tuple[str, ...] = ()
    proc: subprocess.Popen[str] = field(init=False)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (monotonic, frames, dts)
    stderr_lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        limit = ["-t", str(self.seconds)] if self.seconds is not None else []
        self.proc = subprocess.Popen(
            [
                "ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-nostats",
                "-rtsp_transport", self.transport, *self.input_args, "-i", self.url, *limit,
                "-c", "copy", "-f", "framecrc", "-flush_packets", "1", "-",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            fields = line.split(",")
            if line.startswith("#") or len(fields) < 5:
                continue
            self.samples.append((time.monotonic(), len(self.samples) + 1, int(fields[1])))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip())

    def max_gap(self, start: float, end: float) -> float:
        """The longest wait between two frames arriving in [start, end]."""
        times = [t for t, _, _ in self.samples if start <= t <= end]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    @property
    def frames(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def frames_at(self, moment: float) -> int:
        return max((f for t, f, _ in self.samples if t <= moment), default=0)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ffmpeg on {self.url} still running after {timeout} s") from None


@pytest.fixture
def clients() -> Iterator[Callable[..., FfmpegClient]]:
    made: list[FfmpegClient] = []

    def start(
        url: str, transport: str = "tcp", seconds: float | None = None, input_args: tuple[str, ...] = ()
    ) -> FfmpegClient:
        client = FfmpegClient(url, transport, seconds, input_args)
        made.append(client)
        return client

    yield start
    for client in made:
        client.kill()


@pytest.fixture
def engines(gst_init: None) -> Iterator[EngineFactory]:
    made: list[Engine] = []

    def start(**server: Any) -> Engine:
        engine = Engine(rtsp_server=RtspServerConfig(**{"host": "127.0.0.1", "port": 0, **server}))
        engine.start()
        made.append(engine)
        return engine

    yield start
    for engine in made:
        engine.stop()


def url(engine: Engine, stream_id: str, credentials: str = "") -> str:
    return f"rtsp://{credentials}127.0.0.1:{engine.rtsp_port}/{stream_id}"


def served(stream_id: str, source: dict[str, Any], **extra: Any) -> StreamSpec:
    return parse_stream_spec({"id": stream_id, "source": source, "serve": True, "recovery": FAST, **extra})


def camera_source(uri: str) -> dict[str, Any]:
    return {"type": "rtsp", "uri": uri, "transport": "tcp", "connect_timeout_seconds": 3}


def probe(target: str, transport: str = "tcp", timeout: float = 15) -> tuple[int, dict[str, Any], str]:
    """ffprobe's exit code, first video stream and stderr (no exception: 401/503 are results)."""
    try:
        proc = subprocess.run(
            ["ffprobe", "-hide_banner", "-v", "error", "-rtsp_transport", transport,
             "-print_format", "json", "-show_streams", target],
            capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise FfprobeError(target, None, f"timed out after {timeout} s") from exc
    streams = json.loads(proc.stdout).get("streams", []) if proc.returncode == 0 and proc.stdout else []
    return proc.returncode, (streams[0] if streams else {}), proc.stderr


def server_info(engine: Engine, stream_id: str) -> dict[str, Any]:
    info: dict[str, Any] = engine.info(stream_id)["server"]
    return info


def wait_clients(engine: Engine, stream_id: str, count: int, timeout: float) -> None:
    wait_until(
        lambda: server_info(engine, stream_id)["clients"] == count,
        timeout,
        message=f"{stream_id}: expected {count} clients: {server_info(engine, stream_id)}",
    )


# -- tests ------------------------------------------------------------------------------------------
def test_ffprobe_reads_codec_and_size_of_served_file_and_cameras(
    engines: EngineFactory, camera: CameraFactory, h264_mp4: Path
) -> None:
    engine = engines()
    cam = camera(width=640, height=360)
    hevc = camera(codec="h265", width=352, height=288)
    engine.add_stream(served("clip", {"type": "file", "path": str(h264_mp4)}))
    engine.add_stream(served("cam", camera_source(cam.url())))
    engine.add_stream(served("hevc", camera_source(hevc.url())))
    for stream_id in ("clip", "cam", "hevc"):
        wait_state(engine, stream_id, StreamState.PLAYING, 15)

    expected = {"clip": ("h264", 320, 240), "cam": ("h264", 640, 360), "hevc": ("hevc", 352, 288)}
    for stream_id, (codec, width, height) in expected.items():
        code, stream, stderr = probe(url(engine, stream_id))
        assert code == 0, stderr
        assert (stream["codec_name"], stream["width"], stream["height"]) == (codec, width, height)
    status = server_info(engine, "cam")
    assert status["active"] and status["codec"] == "h264" and status["frames_sent"] > 0
    assert status["bytes_sent"] > 0 and status["frames_in"] > 0
    code, _, stderr = probe(url(engine, "nope"))
    assert code != 0 and "404" in stderr


def test_ten_clients_tcp_and_udp_leaving_never_disturbs_the_others(
    engines: EngineFactory, camera: CameraFactory, clients: Callable[..., FfmpegClient], tmp_path: Path
) -> None:
    engine = engines()
    cam = camera()
    engine.add_stream(
        served("cam", camera_source(cam.url()), record={"dir": str(tmp_path), "segment_seconds": 60})
    )
    wait_state(engine, "cam", StreamState.PLAYING, 15)
    readers = [clients(url(engine, "cam"), "tcp" if i % 2 else "udp") for i in range(10)]
    wait_until(lambda: all(r.frames >= 10 for r in readers), 15, message="not every client got frames")
    wait_clients(engine, "cam", 10, 5)

    leaving, staying = readers[:3], readers[3:]
    for reader in leaving:
        reader.kill()
    left_at = time.monotonic()
    time.sleep(3.0)
    for reader in staying:
        assert reader.alive, reader.stderr_lines
        after = [(t, f) for t, f, _ in reader.samples if t >= left_at]
        assert after and after[-1][1] - reader.frames_at(left_at) >= 50, (reader.transport, after)
        # The frames of the staying readers keep coming at the camera's pace while the others leave.
        assert reader.max_gap(left_at - 0.5, left_at + 3.0) < MAX_GAP, reader.transport
    wait_clients(engine, "cam", 7, 5)
    health = engine.health("cam")
    assert health.max_frame_gap_seconds < MAX_GAP, health
    assert health.attempts_total == 1
    assert engine.info("cam")["recorder"] is not None
    for reader in staying:
        reader.kill()
    wait_clients(engine, "cam", 0, 5)


def test_client_limits_answer_503_and_the_admitted_clients_keep_playing(
    engines: EngineFactory, camera: CameraFactory, clients: Callable[..., FfmpegClient]
) -> None:
    engine = engines(max_clients=3, max_clients_per_stream=2)
    cam = camera(mounts=("/a", "/b"))
    engine.add_stream(served("a", camera_source(cam.url("/a"))))
    engine.add_stream(served("b", camera_source(cam.url("/b"))))
    wait_state(engine, "a", StreamState.PLAYING, 15)
    wait_state(engine, "b", StreamState.PLAYING, 15)
    first = [clients(url(engine, "a"), "tcp"), clients(url(engine, "a"), "udp")]
    wait_until(lambda: all(c.frames >= 5 for c in first), 10, message="admitted clients got no frames")

    code, _, stderr = probe(url(engine, "a"))  # third on "a": per-stream limit
    assert code != 0 and "503" in stderr, stderr
    third = clients(url(engine, "b"), "tcp")  # third in total: admitted
    wait_until(lambda: third.frames >= 5, 10, message="client on b got no frames")
    code, _, stderr = probe(url(engine, "b"))  # fourth in total
    assert code != 0 and "503" in stderr, stderr

    before = [c.frames for c in first]
    time.sleep(1.5)
    assert all(c.alive and c.frames > b + 20 for c, b in zip(first, before, strict=True))
    assert server_info(engine, "a")["rejected_over_limit"] == 1
    assert server_info(engine, "b")["rejected_over_limit"] == 1

    first[0].kill()  # a slot frees up: a new client is admitted
    wait_clients(engine, "a", 1, 5)
    code, stream, stderr = probe(url(engine, "a"))
    assert code == 0 and stream["codec_name"] == "h264", stderr


def test_clients_stay_connected_across_a_source_outage(
    engines: EngineFactory, camera: CameraFactory, clients: Callable[..., FfmpegClient]
) -> None:
    """~20 s of reading across a 5 s camera death: hold on one engine, slate on another."""
    hold = engines()
    slate = engines(outage="slate", outage_after_seconds=1.0)
    cam = camera()
    for engine in (hold, slate):
        engine.add_stream(served("cam", camera_source(cam.url())))
        wait_state(engine, "cam", StreamState.PLAYING, 15)
    tcp, udp = clients(url(hold, "cam"), "tcp"), clients(url(hold, "cam"), "udp")
    slated = clients(url(slate, "cam"), "tcp")
    readers = (tcp, udp, slated)
    wait_until(lambda: all(r.frames >= 25 for r in readers), 10, message="no frames before the outage")
    time.sleep(5.0)

    cam.kill()
    down_at = time.monotonic()
    time.sleep(2.5)
    late_at = time.monotonic()  # a client arriving during the outage: the last GOP at once
    # (no probing: ffmpeg waits for seconds of frames before it writes; the GOP may be 1 frame).
    late = clients(url(hold, "cam"), "tcp", input_args=("-analyzeduration", "0", "-probesize", "32"))
    time.sleep(2.5)
    cam.start()
    up_at = time.monotonic()
    wait_state(hold, "cam", StreamState.PLAYING, 10)
    time.sleep(8.0)

    for reader in (*readers, late):
        assert reader.alive, (reader.transport, reader.stderr_lines)
        assert reader.frames >= reader.frames_at(up_at) + 150, (reader.transport, reader.samples[-3:])
        # From the second frame: ffmpeg has no timestamp for the very first RTP packet of a session
        # (gst-rtsp-server cameras too) and writes 0 for it.
        dts = [d for _, _, d in reader.samples][1:]
        bad = [(a, b) for a, b in itertools.pairwise(dts) if b <= a]
        assert not bad, (reader.transport, bad[:5], len(dts))
    assert late.frames_at(up_at) >= 1, late.samples  # the replayed GOP, while the camera was dead
    # hold: nothing during the outage (until the late client's PLAY replays the GOP to everyone).
    quiet = tcp.frames_at(late_at) - tcp.frames_at(down_at + 1.0)
    assert quiet <= 2, quiet
    # slate: a still at ~1 fps.
    slate_frames = slated.frames_at(up_at) - slated.frames_at(down_at + 1.0)
    assert slate_frames >= 2, slate_frames
    assert server_info(slate, "cam")["slate_frames"] >= 2
    assert server_info(hold, "cam")["slate_frames"] == 0


def test_auth_refuses_without_credentials_and_serves_with_them(
    engines: EngineFactory, camera: CameraFactory, clients: Callable[..., FfmpegClient]
) -> None:
    users = [{"username": "alice", "password": "s3cret"}]
    digest = engines(users=users)
    basic = engines(users=users, auth_method="basic")
    cam = camera()
    for engine in (digest, basic):
        engine.add_stream(served("cam", camera_source(cam.url())))
        wait_state(engine, "cam", StreamState.PLAYING, 15)
        for credentials in ("", "alice:wrong@"):
            code, _, stderr = probe(url(engine, "cam", credentials))
            assert code != 0 and "401" in stderr, stderr
        reader = clients(url(engine, "cam", "alice:s3cret@"), "tcp", seconds=2)
        assert reader.wait(15) == 0, reader.stderr_lines
        assert reader.frames >= 25
        assert server_info(engine, "cam")["medias"] <= 1


def test_a_stalled_tcp_reader_neither_slows_ingest_nor_other_clients(
    engines: EngineFactory, clients: Callable[..., FfmpegClient], noisy_clip: Path
) -> None:
    engine = engines(session_timeout_seconds=5)
    engine.add_stream(served("big", {"type": "file", "path": str(noisy_clip)}))
    wait_state(engine, "big", StreamState.PLAYING, 15)
    healthy = clients(url(engine, "big"), "tcp")
    wait_until(lambda: healthy.frames >= 10, 10, message="no frames for the healthy client")

    with stalled_reader("127.0.0.1", engine.rtsp_port or 0, "/big"):
        wait_clients(engine, "big", 2, 5)
        stalled_at = time.monotonic()
        time.sleep(4.0)
        assert engine.health("big").bitrate_bps > 3_000_000  # the test means something
        assert healthy.frames - healthy.frames_at(stalled_at) >= 80
        # Dead-client detection: no RTCP, no keep-alive -> dropped after the session timeout.
        wait_clients(engine, "big", 1, 10)
    health = engine.health("big")
    assert health.max_frame_gap_seconds < MAX_GAP, health
    assert healthy.alive


def test_streams_added_and_removed_at_runtime_appear_and_disappear_as_mounts(
    engines: EngineFactory, camera: CameraFactory, clients: Callable[..., FfmpegClient]
) -> None:
    engine = engines(describe_timeout_seconds=8)
    cam = camera()
    cam.kill()  # added before its first frame: DESCRIBE waits for it
    engine.add_stream(served("late", camera_source(cam.url())))
    reader = clients(url(engine, "late"), "tcp")
    time.sleep(1.0)
    cam.start()
    wait_until(lambda: reader.frames >= 10, 15, message="the early client never got frames")

    engine.remove_stream("late")
    assert reader.wait(10) is not None  # disconnected by the server: ffmpeg ends
    code, _, stderr = probe(url(engine, "late"))
    assert code != 0 and "404" in stderr, stderr

    engine.add_stream(served("late", camera_source(cam.url())))
    wait_state(engine, "late", StreamState.PLAYING, 15)
    code, stream, stderr = probe(url(engine, "late"))
    assert code == 0 and stream["width"] == 320, stderr

    engine.update_stream(served("late", camera_source(cam.url())).model_copy(update={"serve": False}))
    code, _, stderr = probe(url(engine, "late"))
    assert code != 0 and "404" in stderr, stderr
    assert engine.info("late")["server"] is None


def test_a_taken_port_does_not_stop_ingest_and_is_retried(engines: EngineFactory, h264_mp4: Path) -> None:
    first = engines()
    port = first.rtsp_port
    second = engines(port=port)
    second.add_stream(served("clip", {"type": "file", "path": str(h264_mp4)}))
    wait_state(second, "clip", StreamState.PLAYING, 10)  # recording/ingest do not wait for serving
    status = server_info(second, "clip")
    assert second.rtsp_port is None and not status["active"] and "in use" in status["reason"]
    first.stop()
    wait_until(lambda: second.rtsp_port == port, 8, message="the port was not taken over")
    code, stream, stderr = probe(url(second, "clip"))
    assert code == 0 and stream["codec_name"] == "h264", stderr


def test_resolution_change_flows_and_a_codec_change_closes_clients_cleanly(
    engines: EngineFactory, camera: CameraFactory, clients: Callable[..., FfmpegClient]
) -> None:
    engine = engines()
    cam = camera()
    engine.add_stream(served("cam", camera_source(cam.url())))
    wait_state(engine, "cam", StreamState.PLAYING, 15)
    reader = clients(url(engine, "cam"), "tcp")
    wait_until(lambda: reader.frames >= 10, 10, message="no frames")

    cam.restart(width=640, height=480)
    restarted = time.monotonic()
    wait_until(lambda: server_info(engine, "cam")["width"] == 640, 10, message="new size not seen")
    wait_until(lambda: reader.frames > reader.frames_at(restarted) + 25, 10, message="reader stopped")
    assert reader.alive
    code, stream, stderr = probe(url(engine, "cam"))
    assert code == 0 and (stream["width"], stream["height"]) == (640, 480), stderr

    cam.restart(codec="h265")
    reader.wait(10)  # the server closed it: it cannot follow a codec change
    code, stream, stderr = probe(url(engine, "cam"))
    assert code == 0 and stream["codec_name"] == "hevc", stderr
    assert server_info(engine, "cam")["codec_changes"] == 1


# -- fixtures and tools for the stalled-reader test ---------------------------------------------------
@pytest.fixture(scope="module")
def noisy_clip(gst_init: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of 640x360 noise at ~6 Mbit/s: a source heavy enough to fill a stalled socket fast."""
    from gi.repository import Gst

    path = tmp_path_factory.mktemp("noisy") / "noisy.mp4"
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=100 pattern=snow "
        "! video/x-raw,format=I420,width=640,height=360,framerate=25/1 "
        "! x264enc bitrate=6000 tune=zerolatency speed-preset=ultrafast key-int-max=25 "
        f"! h264parse ! mp4mux ! filesink location={path}"
    )
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    assert bus is not None
    message = bus.timed_pop_filtered(60 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    assert message is not None and message.type == Gst.MessageType.EOS
    return path


def _request(sock: socket.socket, text: str) -> str:
    sock.sendall(text.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed after {text.split(maxsplit=1)[0]}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head.decode(errors="replace")


@contextlib.contextmanager
def stalled_reader(host: str, port: int, path: str) -> Iterator[socket.socket]:
    """A raw RTSP client: DESCRIBE, SETUP (TCP interleaved), PLAY, then it never reads again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up fast
    sock.settimeout(10)
    try:
        sock.connect((host, port))
        base = f"rtsp://{host}:{port}{path}"
        head = _request(sock, f"DESCRIBE {base} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n")
        assert " 200 " in head.split("\r\n")[0], head
        head = _request(
            sock,
            f"SETUP {base}/stream=0 RTSP/1.0\r\nCSeq: 2\r\n"
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n",
        )
        assert " 200 " in head.split("\r\n")[0], head
        session = next(line.split(":", 1)[1].split(";")[0].strip() for line in head.split("\r\n")
                       if line.lower().startswith("session:"))  # fmt: skip
        sock.sendall(f"PLAY {base} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n".encode())
        yield sock  # never read from again
    finally:
        sock.close()
