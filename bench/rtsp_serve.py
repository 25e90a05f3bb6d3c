"""RTSP re-serving figures: first-frame time, CPU per served client, frame gap when one leaves.

The engine runs in a child process (this file with ``--engine-child``) so its CPU is read from
/proc alone; the source is an RTSP test camera child; clients are ffmpeg processes (CPU load)
and raw RTSP-over-TCP readers in this process (exact arrival time of every frame).

    .venv/bin/python bench/rtsp_serve.py [--seconds 10] [--noisy-mbps 6]

``--noisy-mbps N``: the source is a looping file of 640x360 noise encoded at N Mbit/s instead of
the camera's 320x240 test picture (~0.2 Mbit/s): per-client cost at a real camera's bitrate.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streamwarden.testing.camera import CameraProcess, free_port

TICKS = os.sysconf("SC_CLK_TCK")


# -- the engine child ----------------------------------------------------------------------------
def engine_child(source_json: str, stream_ids: list[str]) -> int:
    from streamwarden.config import RtspServerConfig, parse_stream_spec
    from streamwarden.engine import Engine

    engine = Engine(rtsp_server=RtspServerConfig(host="127.0.0.1", port=0, max_clients_per_stream=64))
    engine.start()
    source = json.loads(source_json)
    for stream_id in stream_ids:
        engine.add_stream(parse_stream_spec({"id": stream_id, "source": source, "serve": True}))
    print(f"READY {engine.rtsp_port}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    engine.stop()
    return 0


@contextlib.contextmanager
def engine_process(source: dict[str, str], stream_ids: list[str]) -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--engine-child", json.dumps(source), *stream_ids],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        yield proc.pid, int(line.split()[1])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# -- a raw RTSP reader: exact frame arrival times -------------------------------------------------
@dataclass
class RawReader:
    """DESCRIBE/SETUP (TCP interleaved)/PLAY, then timestamps every RTP packet with the marker bit."""

    url: str
    started: float = 0.0
    first_packet: float | None = None
    first_keyframe: float | None = None
    frame_times: list[float] = field(default_factory=list)
    _sock: socket.socket | None = None
    _stop: bool = False

    def start(self) -> RawReader:
        self.started = time.monotonic()
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def close(self) -> None:
        self._stop = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    def _run(self) -> None:
        host, port_path = self.url.removeprefix("rtsp://").split(":", 1)
        port, path = port_path.split("/", 1)
        sock = socket.create_connection((host, int(port)), timeout=30)
        self._sock = sock
        buf = b""

        def response(request: str) -> str:
            nonlocal buf
            sock.sendall(request.encode())
            while True:
                while buf.startswith(b"$") and len(buf) >= 4:
                    size = struct.unpack(">H", buf[2:4])[0]
                    if len(buf) < 4 + size:
                        break
                    self._packet(buf[4 : 4 + size])
                    buf = buf[4 + size :]
                if b"\r\n\r\n" in buf and not buf.startswith(b"$"):
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length"):
                            length = int(line.split(b":")[1])
                    if len(rest) >= length:
                        buf = rest[length:]
                        return head.decode()
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk

        base = f"rtsp://{host}:{port}/{path}"
        try:
            response(f"DESCRIBE {base} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n")
            head = response(
                f"SETUP {base}/stream=0 RTSP/1.0\r\nCSeq: 2\r\n"
                "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
            )
            session = next(
                line.split(":", 1)[1].split(";")[0].strip()
                for line in head.split("\r\n")
                if line.lower().startswith("session:")
            )
            response(f"PLAY {base} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n")
            while not self._stop:
                while len(buf) >= 4 and buf.startswith(b"$"):
                    size = struct.unpack(">H", buf[2:4])[0]
                    if len(buf) < 4 + size:
                        break
                    if buf[1] == 0:
                        self._packet(buf[4 : 4 + size])
                    buf = buf[4 + size :]
                if buf and not buf.startswith(b"$"):
                    end = buf.find(b"$")  # a keep-alive reply or an RTSP message: skip it
                    buf = buf[end:] if end >= 0 else b""
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
        except (OSError, ConnectionError, StopIteration):
            return

    def _packet(self, rtp: bytes) -> None:
        now = time.monotonic()
        if len(rtp) < 13:
            return
        if self.first_packet is None:
            self.first_packet = now
        csrc = rtp[0] & 0x0F
        payload = rtp[12 + 4 * csrc :]
        nal = payload[0] & 0x1F
        # The start of an IDR picture: a single IDR NAL, or the first fragment of one (FU-A).
        key = nal == 5 or (nal == 28 and len(payload) > 1 and payload[1] & 0x80 and payload[1] & 0x1F == 5)
        if key and self.first_keyframe is None:
            self.first_keyframe = now
        if rtp[1] & 0x80:  # marker: last packet of a frame
            self.frame_times.append(now)

    def max_gap(self, start: float, end: float) -> float:
        times = [t for t in self.frame_times if start <= t <= end]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def ffmpeg(url: str, transport: str = "tcp") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-rtsp_transport",
            transport,
            "-i",
            url,
            "-c",
            "copy",
            "-f",
            "null",
            "-",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)


# -- the measurements -----------------------------------------------------------------------------
def first_frame_times(port: int, cam: CameraProcess, linger: float) -> dict[str, object]:
    """Seconds from connect to the first RTP packet and to the first keyframe, per case."""

    def one(path: str) -> tuple[float, float]:
        reader = RawReader(f"rtsp://127.0.0.1:{port}/{path}").start()
        wait_for(lambda: reader.first_keyframe is not None, 15)
        reader.close()
        assert reader.first_packet is not None and reader.first_keyframe is not None
        return reader.first_packet - reader.started, reader.first_keyframe - reader.started

    out: dict[str, object] = {}
    fresh = []
    for _ in range(3):  # a new media each time: wait out the linger of the previous one
        fresh.append(one("ff"))
        time.sleep(linger + 1.5)
    out["new_media_primed_with_gop"] = fresh
    alone = []
    for _ in range(4):  # the media outlived its last client: alone on it, the GOP is sent again
        time.sleep(random.uniform(0.2, 1.2))
        alone.append(one("ff"))
    out["alone_on_a_lingering_media"] = alone
    joining = []
    holder = ffmpeg(f"rtsp://127.0.0.1:{port}/ff")  # someone watching: joiners share the media
    time.sleep(1.5)
    for _ in range(8):  # a joiner waits for the next keyframe
        time.sleep(random.uniform(0.2, 1.2))
        joining.append(one("ff"))
    holder.kill()
    holder.wait()
    out["joining_a_watched_media"] = joining
    out["joining_median_keyframe_wait"] = statistics.median(k for _, k in joining)
    served = f"rtsp://127.0.0.1:{port}/ff"
    out["ffmpeg_first_decoded_frame_served_vs_camera"] = [
        ffmpeg_first_frame(served),
        ffmpeg_first_frame(cam.url()),
    ]
    cam.kill()
    time.sleep(3.0)
    out["joining_during_outage_replayed_gop"] = [one("ff")]
    time.sleep(linger + 1.5)
    out["new_media_during_outage"] = [one("ff")]
    cam.start()
    return out


def ffmpeg_first_frame(url: str) -> float:
    started = time.monotonic()
    subprocess.run(
        ["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i", url, "-frames:v", "1", "-f", "null", "-"],
        check=True,
        timeout=30,
    )
    return time.monotonic() - started


def cpu_per_client(pid: int, port: int, seconds: float) -> dict[str, float]:
    result: dict[str, float] = {}
    for count in (0, 1, 10):
        procs = [ffmpeg(f"rtsp://127.0.0.1:{port}/cpu", "tcp" if i % 2 == 0 else "udp") for i in range(count)]
        time.sleep(3.0)
        before = cpu_seconds(pid)
        time.sleep(seconds)
        result[f"{count}_clients"] = (cpu_seconds(pid) - before) / seconds
        for proc in procs:
            proc.kill()
            proc.wait()
        time.sleep(1.0)
    return result


def gap_when_one_leaves(port: int) -> dict[str, object]:
    url = f"rtsp://127.0.0.1:{port}/gap"
    watchers = [RawReader(url).start() for _ in range(4)]
    leavers = [ffmpeg(url, "tcp" if i % 2 == 0 else "udp") for i in range(6)]
    raw_leaver = RawReader(url).start()
    time.sleep(4.0)
    base_start = time.monotonic()
    time.sleep(3.0)
    baseline = max(w.max_gap(base_start, time.monotonic()) for w in watchers)
    events = []
    for index, proc in enumerate(leavers):
        moment = time.monotonic()
        if index % 2:
            proc.terminate()  # ffmpeg sends TEARDOWN
        else:
            proc.kill()
        proc.wait()
        time.sleep(1.5)
        events.append(max(w.max_gap(moment - 0.5, moment + 1.5) for w in watchers))
    moment = time.monotonic()
    raw_leaver.close()  # socket closed, no TEARDOWN
    time.sleep(1.5)
    events.append(max(w.max_gap(moment - 0.5, moment + 1.5) for w in watchers))
    for w in watchers:
        w.close()
    return {"baseline_max_gap": baseline, "max_gap_around_each_leave": events}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--engine-child":
        return engine_child(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--noisy-mbps", type=float, default=0.0)
    args = parser.parse_args()
    from streamwarden.media.rtspserver import MEDIA_LINGER_SECONDS

    with CameraProcess(free_port()) as cam:
        if args.noisy_mbps:
            clip = noisy_clip(args.noisy_mbps)
            source = {"type": "file", "path": str(clip)}
            report: dict[str, object] = {
                "source": f"640x360@25 noise, {args.noisy_mbps} Mbit/s, 1 s GOP, file"
            }
        else:
            source = {"type": "rtsp", "uri": cam.url(), "transport": "tcp"}
            report = {"source": "320x240@25 H.264 camera (~0.2 Mbit/s), 1 s GOP"}
        with engine_process(source, ["ff", "cpu", "gap"]) as (pid, port):
            time.sleep(2.0)
            report["engine_cpu_fraction_of_a_core"] = cpu_per_client(pid, port, args.seconds)
            report["frame_gap_seconds"] = gap_when_one_leaves(port)
            if not args.noisy_mbps:  # last: it kills the camera
                report["first_frame_seconds (first RTP packet, first keyframe)"] = first_frame_times(
                    port, cam, MEDIA_LINGER_SECONDS
                )
    print(json.dumps(_rounded(report), indent=1))
    cpu = report["engine_cpu_fraction_of_a_core"]
    assert isinstance(cpu, dict)
    per = (cpu["10_clients"] - cpu["1_clients"]) / 9
    print(f"CPU per extra client: {per * 100:.2f} % of a core")
    return 0


def noisy_clip(mbps: float) -> Path:
    """4 s of 640x360 noise at ``mbps``: a source as heavy as a real camera."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="sw-rtsp-bench-")) / "noisy.mp4"
    subprocess.run(
        ["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=100", "pattern=snow", "!",
         "video/x-raw,format=I420,width=640,height=360,framerate=25/1", "!",
         "x264enc", f"bitrate={int(mbps * 1000)}", "tune=zerolatency", "speed-preset=ultrafast",
         "key-int-max=25", "!", "h264parse", "!", "mp4mux", "!", "filesink", f"location={path}"],
        check=True,
        timeout=120,
    )  # fmt: skip
    return path


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
