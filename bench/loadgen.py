"""Load generator: N RTSP mounts of one pre-encoded H.264 clip, looped from memory, no encoding.

The clip (1080p30, ~4 Mbit/s, a keyframe every second, no B-frames) is encoded once with
x264 and cached. At start the child reads every access unit of it into memory. Each mount's
media is ``appsrc ! rtph264pay`` (not shared: one media per client, starting at the clip's
first keyframe), and ONE feeder thread pushes the next frame into every playing media at the
clip's frame rate: a shallow copy of the buffer (the payload is shared, never copied) with its
timestamps cleared, which appsrc (``do-timestamp``) stamps with the running time. So the loop
is seamless by construction (no demuxer, no seek, no EOS at the wrap: timestamps only ever
increase) and the hot path is one push per frame per mount, plus rtph264pay's packetising.

The feeder counts the frames it pushed per mount ("sent"). Run as a child process so its CPU is
not counted against the system under test::

    python bench/loadgen.py --port P --mounts 32 --clip CLIP [--parent-pid PID]

Control: one command per line on stdin, one ``REPLY {json}`` line per command on stdout:
``stats`` (frames sent per mount, playing medias, late feeder ticks), ``hold`` / ``resume``
(stop / restart feeding; clients stay connected), ``quit``. The first stdout line is
``READY {"port": P, "t": <CLOCK_MONOTONIC when listening>, ...}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gi.repository import Gst, GstRtspServer

log = logging.getLogger("loadgen")

CLIP_WIDTH, CLIP_HEIGHT, CLIP_FPS, CLIP_KBPS, CLIP_SECONDS = 1920, 1080, 30, 4000, 10


def mount_path(index: int) -> str:
    return f"/cam{index}"


def ensure_clip(cache_dir: Path, seconds: int = CLIP_SECONDS) -> Path:
    """Encode the bench clip once (x264, ~2-4 s here) and reuse it from ``cache_dir``.

    Moving SMPTE bars: a plain bouncing ball cannot reach 4 Mbit/s (x264 undershoots to ~2.7).
    """
    path = cache_dir / f"bench-{CLIP_WIDTH}x{CLIP_HEIGHT}p{CLIP_FPS}-{CLIP_KBPS}k-{seconds}s.mp4"
    if path.is_file() and path.stat().st_size > 0:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    frames = seconds * CLIP_FPS
    argv = [
        "gst-launch-1.0",
        "-q",
        "videotestsrc",
        f"num-buffers={frames}",
        "pattern=smpte",
        "horizontal-speed=8",
        "!",
        f"video/x-raw,format=I420,width={CLIP_WIDTH},height={CLIP_HEIGHT},framerate={CLIP_FPS}/1",
        "!",
        "timeoverlay",
        "font-desc=Sans 48",
        "!",
        "x264enc",
        "tune=zerolatency",
        "speed-preset=ultrafast",
        f"key-int-max={CLIP_FPS}",
        f"bitrate={CLIP_KBPS}",
        "!",
        "h264parse",
        "!",
        "mp4mux",
        "!",
        "filesink",
        f"location={tmp}",
    ]
    try:
        subprocess.run(argv, check=True, timeout=300, stdout=subprocess.DEVNULL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- parent side ----------------------------------------------------------------------------------
def loadgen_argv(port: int, mounts: int, clip: Path) -> list[str]:
    here = Path(__file__).resolve()
    return [
        sys.executable,
        str(here),
        "--port",
        str(port),
        "--mounts",
        str(mounts),
        "--clip",
        str(clip),
        "--parent-pid",
        str(os.getpid()),
    ]


# -- child side: everything below runs in the load generator and imports gi ---------------------
class _Outlet:
    """One media's appsrc. Like a camera, it sends only while its client is PLAYING.

    Exception: a live media needs one buffer to finish preparing (its caps make the SDP), so
    the clip's first keyframe is pushed until appsrc takes it ("priming"); it waits at the
    payloader and goes out at PLAY. Nothing else is pushed before PLAY, so nothing queues up
    while a client is slow to send PLAY (one gst-launch with 64 rtspsrc plays them all only
    once every one of them is set up: seconds later).
    """

    __slots__ = ("appsrc", "index", "mount", "playing", "priming")

    def __init__(self, mount: str, appsrc: Gst.Element) -> None:
        self.mount = mount
        self.appsrc = appsrc
        self.priming = True
        self.playing = False
        self.index = 0  # next frame of the clip; 0 is a keyframe


class Feeder:
    """One thread pacing every playing media at the clip's frame rate."""

    def __init__(self, frames: list[Gst.Buffer], fps: float, mounts: Sequence[str]) -> None:
        from gi.repository import Gst

        self._gst = Gst
        self.frames = frames
        self.period = 1.0 / fps
        self.duration = int(Gst.SECOND / fps)
        self.sent = dict.fromkeys(mounts, 0)
        self.push_errors = 0
        self.late_ticks = 0
        self.ticks = 0
        self.holding = False
        self._outlets: list[_Outlet] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def add(self, outlet: _Outlet) -> None:
        with self._lock:
            self._outlets.append(outlet)

    def remove(self, outlet: _Outlet) -> None:
        with self._lock:
            if outlet in self._outlets:
                self._outlets.remove(outlet)
            outlet.playing = False

    def set_playing(self, outlet: _Outlet, playing: bool) -> None:
        with self._lock:
            outlet.playing = playing

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "t": time.monotonic(),
                "sent": dict(self.sent),
                "playing": sum(1 for o in self._outlets if o.playing),
                "priming": sum(1 for o in self._outlets if o.priming),
                "playing_mounts": sorted({o.mount for o in self._outlets if o.playing}),
                "medias": len(self._outlets),
                "ticks": self.ticks,
                "late_ticks": self.late_ticks,
                "push_errors": self.push_errors,
                "holding": self.holding,
            }

    def _run(self) -> None:
        gst = self._gst
        none = gst.CLOCK_TIME_NONE
        ok = gst.FlowReturn.OK
        frames = self.frames
        count = len(frames)
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                outlets = [o for o in self._outlets if o.playing or o.priming] if not self.holding else []
                self.ticks += 1
            for outlet in outlets:
                buffer = frames[outlet.index % count].copy()  # type: ignore[no-untyped-call]  # shallow
                buffer.pts = none
                buffer.dts = none
                buffer.duration = self.duration
                result = outlet.appsrc.emit("push-buffer", buffer)
                if result == ok:
                    outlet.index += 1
                    with self._lock:
                        outlet.priming = False
                        self.sent[outlet.mount] += 1
                elif not outlet.priming:
                    self.push_errors += 1  # while priming, FLUSHING only means appsrc is not started yet
            next_at += self.period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -self.period / 2:
                # Behind (the GIL, a busy machine): skip the missed ticks instead of bursting
                # to catch up. A burst would give frames nearly equal timestamps, which no camera
                # sends; a skipped tick is simply a frame never sent (not counted as sent).
                missed = int(-delay / self.period) + 1
                self.late_ticks += missed
                next_at += missed * self.period


def load_clip(path: Path) -> tuple[list[Gst.Buffer], Gst.Caps, float]:
    """Every access unit of the clip (AVC, AU-aligned) in memory, with its caps and frame rate."""
    from gi.repository import Gst

    pipeline = Gst.parse_launch(
        "filesrc name=src ! qtdemux ! h264parse ! video/x-h264,stream-format=avc,alignment=au "
        "! appsink name=sink sync=false max-buffers=0 enable-last-sample=false"
    )
    assert isinstance(pipeline, Gst.Bin)
    src = pipeline.get_by_name("src")
    sink = pipeline.get_by_name("sink")
    assert src is not None and sink is not None
    src.set_property("location", str(path))
    pipeline.set_state(Gst.State.PLAYING)
    frames: list[Gst.Buffer] = []
    caps: Gst.Caps | None = None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            sample = sink.emit("try-pull-sample", Gst.SECOND)
            if sample is None:
                if sink.get_property("eos"):
                    break
                continue
            buffer = sample.get_buffer()
            if buffer is not None:
                frames.append(buffer)
            caps = caps or sample.get_caps()
    finally:
        pipeline.set_state(Gst.State.NULL)
    if not frames or caps is None:
        raise RuntimeError(f"no video read from {path}")
    if frames[0].has_flags(Gst.BufferFlags.DELTA_UNIT):
        raise RuntimeError(f"{path} does not start with a keyframe")
    structure = caps.get_structure(0)
    ok, num, den = structure.get_fraction("framerate") if structure is not None else (False, 0, 1)
    fps = num / den if ok and num > 0 and den > 0 else float(CLIP_FPS)
    return frames, caps, fps


def _make_factory(mount: str, caps: Gst.Caps, feeder: Feeder) -> GstRtspServer.RTSPMediaFactory:
    from gi.repository import Gst, GstRtspServer

    class ClipFactory(GstRtspServer.RTSPMediaFactory):
        def do_create_element(self, url: Any) -> Gst.Element:
            element = Gst.parse_launch(
                "( appsrc name=src is-live=true format=time do-timestamp=true block=false max-bytes=0 "
                "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
            )
            assert isinstance(element, Gst.Bin)
            appsrc = element.get_by_name("src")
            assert appsrc is not None
            appsrc.set_property("caps", caps)
            return element

    factory = ClipFactory()
    factory.set_shared(False)  # one media per client: each starts at the first keyframe
    factory.set_stop_on_disconnect(True)

    def on_configure(_factory: Any, media: GstRtspServer.RTSPMedia) -> None:
        element = media.get_element()
        appsrc = element.get_by_name("src") if isinstance(element, Gst.Bin) else None
        if appsrc is None:
            return
        outlet = _Outlet(mount, appsrc)
        feeder.add(outlet)

        def on_unprepared(_media: GstRtspServer.RTSPMedia) -> None:
            log.debug("%s unprepared", mount)
            feeder.remove(outlet)

        media.connect("unprepared", on_unprepared)

        def on_new_state(_media: GstRtspServer.RTSPMedia, state: int) -> None:
            log.debug("%s new-state %s", mount, state)
            feeder.set_playing(outlet, state == Gst.State.PLAYING)

        media.connect("new-state", on_new_state)

    factory.connect("media-configure", on_configure)
    return factory


def _quitter(loop: Any) -> Callable[..., bool]:
    def quit_loop(*_: Any) -> bool:
        loop.quit()
        return False

    return quit_loop


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="RTSP load generator serving a pre-encoded clip")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mounts", type=int, required=True)
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s loadgen %(message)s",
    )
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    frames, caps, fps = load_clip(args.clip)
    mounts = [mount_path(i) for i in range(args.mounts)]
    feeder = Feeder(frames, fps, mounts)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    points = server.get_mount_points()
    assert points is not None
    for mount in mounts:
        points.add_factory(mount, _make_factory(mount, caps, feeder))
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        log.error("cannot listen on 127.0.0.1:%d", args.port)
        return 1
    listening_at = time.monotonic()
    feeder.start()
    out_lock = threading.Lock()

    def emit(prefix: str, data: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(f"{prefix} {json.dumps(data)}\n")
            sys.stdout.flush()

    def commands() -> None:
        for raw in sys.stdin:
            cmd = raw.strip()
            if cmd == "stats":
                emit("REPLY", feeder.stats())
            elif cmd in ("hold", "resume"):
                feeder.holding = cmd == "hold"
                emit("REPLY", {"ok": True, "holding": feeder.holding})
            elif cmd == "quit":
                emit("REPLY", {"ok": True})
                break
            else:
                emit("REPLY", {"error": f"unknown command {cmd!r}"})
        GLib.idle_add(loop.quit)  # stdin closed (parent gone) or quit

    threading.Thread(target=commands, name="commands", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, _quitter(loop))
    if args.parent_pid is not None:
        parent: int = args.parent_pid

        def check_parent() -> bool:
            if os.getppid() != parent:
                loop.quit()
                return False
            return True

        GLib.timeout_add(500, check_parent)
    log.info("serving %d mounts of %s (%d frames, %.0f fps)", len(mounts), args.clip, len(frames), fps)
    emit(
        "READY",
        {"port": int(server.get_bound_port()), "t": listening_at, "frames": len(frames), "fps": fps},
    )
    try:
        loop.run()  # type: ignore[no-untyped-call]
    finally:
        feeder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
