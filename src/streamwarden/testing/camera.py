"""An RTSP test camera (gst-rtsp-server) run as a child process, and its controller.

The camera runs in its own process so that tests and ``streamwarden demo`` can do to it what real
cameras do: die (SIGKILL), freeze with the socket still open (SIGSTOP) and come back on the same
port. ``CameraProcess`` is the parent-side handle; it imports no GStreamer, so the parent needs no
``gi`` to drive it.

Child command line::

    python -m streamwarden.testing.camera --port 8554 [--host 127.0.0.1] [--mount /cam1 ...]
        [--user U --password PW] [--width 320 --height 240 --fps 25] [--codec h264|h265]
        [--bitrate KBPS] [--audio aac|pcmu|pcma] [--clip FILE] [--parent-pid PID]

Once the socket listens the child prints exactly one line, ``READY rtsp://HOST:PORT``, to stdout;
everything else goes to stderr through ``logging``. SIGUSR1 silences its audio for good (no
packets at all, no BYE), as a camera whose microphone stream dies while the video goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

if TYPE_CHECKING:
    from gi.repository import Gst, GstRtspServer

__all__ = ["CameraConfig", "CameraError", "CameraProcess", "free_port", "main"]

log = logging.getLogger(__name__)

CODECS = ("h264", "h265")
# What real cameras send next to the video: AAC as mpeg4-generic, or G.711 (µ-law, A-law).
AUDIO_CODECS = ("aac", "pcmu", "pcma")
_AAC_ENCODERS = ("avenc_aac", "voaacenc")
_MUTE = "valve name=mute"  # in each audio branch; SIGUSR1 closes it
_READY_PREFIX = "READY "
_DEMUXERS = {
    ".mp4": "qtdemux",
    ".m4v": "qtdemux",
    ".mov": "qtdemux",
    ".mkv": "matroskademux",
    ".ts": "tsdemux",
}
_MEDIA_ROLE = "user"


class CameraError(RuntimeError):
    """The camera child could not be started (bad options, port taken, no READY in time)."""


@dataclass(frozen=True)
class CameraConfig:
    """Everything the child is started with; ``restart`` replaces fields of it."""

    port: int
    host: str = "127.0.0.1"
    mounts: tuple[str, ...] = ("/cam1",)
    user: str | None = None
    password: str | None = None
    width: int = 320
    height: int = 240
    fps: int = 25
    codec: str = "h264"
    bitrate: int = 1000
    clip: Path | None = None
    audio: str | None = None  # an audio stream (pay1) next to the video: "aac", "pcmu" or "pcma"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535 (gst-rtsp-server cannot report port 0), got {self.port}")
        if not self.mounts or any(not m.startswith("/") for m in self.mounts):
            raise ValueError(f"mounts must be non-empty paths starting with '/', got {self.mounts!r}")
        if (self.user is None) != (self.password is None):
            raise ValueError("give both user and password, or neither")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if min(self.width, self.height, self.fps, self.bitrate) <= 0:
            raise ValueError("width, height, fps and bitrate must be positive")
        if self.audio is not None and self.audio not in AUDIO_CODECS:
            raise ValueError(f"audio must be one of {AUDIO_CODECS}, got {self.audio!r}")
        if self.audio not in (None, "aac") and self.clip is not None:
            raise ValueError("a clip can only serve its own (AAC) audio")

    def argv(self) -> list[str]:
        """The child's command-line options (without the interpreter and module)."""
        args = ["--host", self.host, "--port", str(self.port)]
        for mount in self.mounts:
            args += ["--mount", mount]
        if self.user is not None and self.password is not None:
            args += ["--user", self.user, "--password", self.password]
        args += ["--width", str(self.width), "--height", str(self.height), "--fps", str(self.fps)]
        args += ["--codec", self.codec, "--bitrate", str(self.bitrate)]
        if self.clip is not None:
            args += ["--clip", str(self.clip)]
        if self.audio is not None:
            args += ["--audio", self.audio]
        return args


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind 0, read, close).

    Racy by nature: another process may take it before the camera binds; ``CameraProcess.start``
    then fails with "address already in use" in its message.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class CameraProcess:
    """Parent-side handle of one camera child process.

    Not thread-safe: drive it from one thread. Use it as a context manager (or call ``close``) so the
    child never outlives the test; the child also exits by itself when its parent dies.
    """

    _RESTARTABLE = frozenset(f.name for f in dataclasses.fields(CameraConfig)) - {"port", "host"}

    def __init__(
        self,
        port: int,
        *,
        mounts: Sequence[str] = ("/cam1",),
        user: str | None = None,
        password: str | None = None,
        width: int = 320,
        height: int = 240,
        fps: int = 25,
        codec: str = "h264",
        host: str = "127.0.0.1",
        bitrate: int = 1000,
        clip: Path | None = None,
        audio: str | None = None,
    ) -> None:
        self._config = CameraConfig(
            port=port,
            host=host,
            mounts=tuple(mounts),
            user=user,
            password=password,
            width=width,
            height=height,
            fps=fps,
            codec=codec,
            bitrate=bitrate,
            clip=clip,
            audio=audio,
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        # One log per handle, appended across restarts, read back for error messages. A file rather
        # than a pipe: nobody has to drain it, so a chatty child can never block on stderr.
        self._log_path: Path | None = None  # made by the first start()
        self.ready_seconds: float | None = None
        """How long the last ``start`` waited for READY."""

    # -- introspection -------------------------------------------------------------------------
    @property
    def config(self) -> CameraConfig:
        return self._config

    @property
    def port(self) -> int:
        return self._config.port

    @property
    def host(self) -> str:
        return self._config.host

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def running(self) -> bool:
        """True while the child exists, paused (SIGSTOP) included."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    def url(self, mount: str = "/cam1", *, with_credentials: bool = True) -> str:
        """The RTSP URL of ``mount``, with ``user:password@`` when the camera has auth."""
        cfg = self._config
        creds = ""
        if with_credentials and cfg.user is not None and cfg.password is not None:
            creds = f"{quote(cfg.user, safe='')}:{quote(cfg.password, safe='')}@"
        return f"rtsp://{creds}{_url_host(cfg.host)}:{cfg.port}{mount}"

    def stderr_tail(self, max_chars: int = 3000) -> str:
        """The end of the child's log, for error messages."""
        if self._log_path is None:
            return ""
        try:
            data = self._log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[-max_chars:].decode("utf-8", "replace")

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> None:
        """Spawns the child and returns once it printed READY; raises ``CameraError`` otherwise."""
        if self.running:
            raise CameraError(f"camera on port {self.port} is already running (pid {self.pid})")
        self._close_pipes()
        env = dict(os.environ)
        # The child must import this very package, installed or not.
        src_dir = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_dir, env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "streamwarden.testing.camera", *self._config.argv()]
        argv += ["--parent-pid", str(os.getpid())]
        started = time.monotonic()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"camera-{self.port}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        with self._log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file, env=env
            )
        self._paused = False
        try:
            line = self._wait_for_ready(timeout)
        except BaseException:
            self.kill()
            raise
        self.ready_seconds = time.monotonic() - started
        log.debug("camera %s ready in %.2f s: %s", self.pid, self.ready_seconds, line)

    def _wait_for_ready(self, timeout: float) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                if b"\n" in buf:
                    line = buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
                    if line.startswith(_READY_PREFIX):
                        return line
                    raise CameraError(f"unexpected output from camera child: {line!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CameraError(
                        f"camera on port {self.port} not READY within {timeout:.1f} s; "
                        f"stderr:\n{self.stderr_tail()}"
                    )
                if not sel.select(remaining):
                    continue
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:  # EOF: the child died before READY
                    code = proc.wait(timeout=5)
                    raise CameraError(
                        f"camera on port {self.port} exited with code {code} before READY; "
                        f"stderr:\n{self.stderr_tail()}"
                    )
                buf += chunk

    def kill(self) -> None:
        """SIGKILL, like a power cut; waits for the child to be gone (its socket closed)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()  # also ends a stopped process
            proc.wait(timeout=10)
        self._paused = False
        self._close_pipes()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM for a clean exit; SIGKILL if that takes longer than ``timeout``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self._paused:
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("camera %s ignored SIGTERM for %.1f s: killing it", proc.pid, timeout)
                proc.kill()
                proc.wait(timeout=10)
        self._paused = False
        self._close_pipes()

    def mute_audio(self) -> None:
        """SIGUSR1: the audio stream stops sending (silently; video goes on)."""
        self._require_running().send_signal(signal.SIGUSR1)

    def pause(self) -> None:
        """SIGSTOP: the socket stays open but nothing is sent or answered (a silent stall).

        Returns once the kernel reports the child stopped: signal delivery is asynchronous, and a
        test that checks for the stall right after ``pause()`` must not see a last burst of work.
        """
        proc = self._require_running()
        proc.send_signal(signal.SIGSTOP)
        self._paused = True
        self._wait_for_state(proc.pid, stopped=True)

    def resume(self) -> None:
        """SIGCONT after ``pause``; returns once the child runs again."""
        proc = self._require_running()
        proc.send_signal(signal.SIGCONT)
        self._paused = False
        self._wait_for_state(proc.pid, stopped=False)

    @staticmethod
    def _wait_for_state(pid: int, *, stopped: bool, timeout: float = 5.0) -> None:
        stat = Path(f"/proc/{pid}/stat")
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return  # no procfs (or the process is gone): nothing to wait for
            if (state in "Tt") == stopped:
                return
            if time.monotonic() >= deadline:
                raise CameraError(f"camera pid {pid} still in state {state!r} after {timeout:.0f} s")
            time.sleep(0.005)

    def restart(self, *, timeout: float = 15.0, **changes: Any) -> None:
        """Kills the child if running and starts it again on the same port.

        ``changes`` replace start options (width, height, fps, codec, bitrate, user, password,
        mounts, clip, audio); port and host stay, since "the same camera came back" is the point.
        """
        unknown = set(changes) - self._RESTARTABLE
        if unknown:
            raise TypeError(f"restart() cannot change {sorted(unknown)}")
        if "mounts" in changes:
            changes["mounts"] = tuple(changes["mounts"])
        new_config = dataclasses.replace(self._config, **changes)
        self.kill()
        self._config = new_config
        self.start(timeout)

    def close(self) -> None:
        """Kills the child and removes its log."""
        if self.paused:
            self.resume()  # not needed for SIGKILL, but leaves no stopped process behind on error
        self.kill()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<CameraProcess {self.url(with_credentials=False)} pid={self.pid} {state}>"

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise CameraError(f"camera on port {self.port} is not running")
        return self._proc

    def _close_pipes(self) -> None:
        if self._proc is not None and self._proc.poll() is not None and self._proc.stdout is not None:
            self._proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# Child side: everything below runs in the camera process and is the only part that imports gi.


def _audio_launch(audio: str | None, aac_encoder: str | None) -> str:
    """A live tone encoded as a camera would send it, on ``pay1`` (empty without audio)."""
    if audio is None:
        return ""
    tone = "audiotestsrc is-live=true wave=sine freq=440 volume=0.2"
    if audio == "aac":
        # 1024 samples per buffer: one AAC frame each, like a camera's encoder.
        return (
            f" {tone} samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=1 ! audioconvert "
            f"! {aac_encoder} ! {_MUTE} ! rtpmp4gpay name=pay1 pt=97"
        )
    encoder, payloader = ("mulawenc", "rtppcmupay") if audio == "pcmu" else ("alawenc", "rtppcmapay")
    # 20 ms packets at 8 kHz mono, the usual G.711 packetisation.
    return (
        f" {tone} samplesperbuffer=160 ! audio/x-raw,rate=8000,channels=1 ! {encoder} ! {_MUTE} "
        f"! {payloader} name=pay1"
    )


def _live_launch(cfg: CameraConfig, has_timeoverlay: bool, aac_encoder: str | None = None) -> str:
    """Encodes videotestsrc live: the cheapest real-time H.264/H.265 source (see shared notes)."""
    overlay = "timeoverlay ! " if has_timeoverlay else ""
    if cfg.codec == "h264":
        enc = "x264enc"
        pay = "rtph264pay"
        extra = ""
    else:
        enc = "x265enc"
        pay = "rtph265pay"
        extra = " option-string=repeat-headers=1"
    return (
        f"( videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,format=I420,width={cfg.width},height={cfg.height},framerate={cfg.fps}/1 "
        f"! {overlay}{enc} tune=zerolatency speed-preset=ultrafast key-int-max={cfg.fps} "
        f"bitrate={cfg.bitrate}{extra} ! {pay} name=pay0 pt=96 config-interval=-1"
        f"{_audio_launch(cfg.audio, aac_encoder)} )"
    )


def _clip_factory(clip: Path, codec: str, audio: bool = False) -> GstRtspServer.RTSPMediaFactory:
    """A factory serving a pre-encoded file, built per media so the path needs no quoting.

    The file is played once per media (no loop); a shared media ends at the end of the file.
    With ``audio`` its AAC track goes out too (pay1).
    """
    from gi.repository import Gst, GstRtspServer

    class ClipFactory(GstRtspServer.RTSPMediaFactory):
        def __init__(self, clip: Path, codec: str, audio: bool) -> None:
            super().__init__()
            self.clip = clip
            self.codec = codec
            self.audio = audio

        def do_create_element(self, url: Any) -> Gst.Element:
            demux = _DEMUXERS.get(self.clip.suffix.lower(), "parsebin")
            parse, pay = ("h264parse", "rtph264pay") if self.codec == "h264" else ("h265parse", "rtph265pay")
            desc = (
                f"filesrc name=src ! {demux} name=demux ! {parse} ! {pay} name=pay0 pt=96 config-interval=-1"
            )
            if self.audio:
                # Parsers pick their pads by caps; the queue keeps one demuxer thread from stalling.
                desc += f" demux. ! aacparse ! queue ! {_MUTE} ! rtpmp4gpay name=pay1 pt=97"
            desc = f"( {desc} )"
            element = Gst.parse_launch(desc)
            assert isinstance(element, Gst.Bin)
            src = element.get_by_name("src")
            assert src is not None
            src.set_property("location", str(self.clip))
            return element

    return ClipFactory(clip, codec, audio)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m streamwarden.testing.camera", description="RTSP test camera (gst-rtsp-server)."
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mount", action="append", dest="mounts", help="repeatable; default /cam1")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--codec", choices=CODECS, default="h264")
    parser.add_argument("--bitrate", type=int, default=1000, help="encoder bitrate in kbit/s")
    parser.add_argument("--clip", type=Path, help="serve this pre-encoded file (played once per media)")
    parser.add_argument("--audio", choices=AUDIO_CODECS, help="also send an audio stream (pay1)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer our parent")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the camera until SIGTERM/SIGINT (or the parent's death); returns the exit code."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s camera[%(process)d] %(levelname)s %(message)s",
    )
    try:
        cfg = CameraConfig(
            port=args.port,
            host=args.host,
            mounts=tuple(args.mounts or ("/cam1",)),
            user=args.user,
            password=args.password,
            width=args.width,
            height=args.height,
            fps=args.fps,
            codec=args.codec,
            bitrate=args.bitrate,
            clip=args.clip,
            audio=args.audio,
        )
    except ValueError as exc:
        log.error("bad options: %s", exc)
        return 2
    if cfg.clip is not None and not cfg.clip.is_file():
        log.error("clip %s does not exist", cfg.clip)
        return 2

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    for element in ("x264enc" if cfg.codec == "h264" else "x265enc", f"rtp{cfg.codec}pay"):
        if cfg.clip is None and Gst.ElementFactory.find(element) is None:
            log.error("GStreamer element %s is not available", element)
            return 2
    aac_encoder = next((e for e in _AAC_ENCODERS if Gst.ElementFactory.find(e) is not None), None)
    if cfg.audio == "aac" and aac_encoder is None and cfg.clip is None:
        log.error("no AAC encoder available (tried %s)", ", ".join(_AAC_ENCODERS))
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address(cfg.host)
    server.set_service(str(cfg.port))

    permissions: GstRtspServer.RTSPPermissions | None = None
    if cfg.user is not None and cfg.password is not None:
        # As gst-rtsp-server's examples/test-auth.c: a basic-auth user whose token carries a role,
        # and a per-factory permission for that role. No default token, so anonymous → 401.
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, _MEDIA_ROLE)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(cfg.user, cfg.password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(_MEDIA_ROLE, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
        permissions.add_permission_for_role(
            _MEDIA_ROLE, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True
        )

    mount_points = server.get_mount_points()
    assert mount_points is not None
    medias: list[Gst.Element] = []  # every media's pipeline, for mute_audio

    def on_media(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        medias.append(media.get_element())

    def mute_audio() -> bool:
        for element in medias:
            valve = element.get_by_name("mute") if isinstance(element, Gst.Bin) else None
            if valve is not None:
                valve.set_property("drop", True)
        log.info("audio muted")
        return GLib.SOURCE_CONTINUE

    launch = _live_launch(cfg, Gst.ElementFactory.find("timeoverlay") is not None, aac_encoder)
    for mount in cfg.mounts:
        if cfg.clip is not None:
            factory = _clip_factory(cfg.clip, cfg.codec, cfg.audio == "aac")
        else:
            factory = GstRtspServer.RTSPMediaFactory()
            factory.set_launch(launch)
        # One encoder per mount, shared by all its clients: N readers cost no extra encoding.
        factory.set_shared(True)
        factory.connect("media-configure", on_media)
        if permissions is not None:
            factory.set_permissions(permissions)
        mount_points.add_factory(mount, factory)

    def on_client(_server: GstRtspServer.RTSPServer, client: GstRtspServer.RTSPClient) -> None:
        conn = client.get_connection()
        log.info("client connected from %s", conn.get_ip() if conn is not None else "?")

    server.connect("client-connected", on_client)

    loop = GLib.MainLoop()
    # attach() binds and listens synchronously (gst-rtsp-server binds with SO_REUSEADDR, so a port
    # freed by a SIGKILLed camera can be reused at once); 0 means the bind failed.
    if server.attach(None) == 0:
        log.error("cannot listen on %s:%d (address already in use?)", cfg.host, cfg.port)
        return 1

    def quit_on_signal(signum: int) -> bool:
        log.info("signal %d: exiting", signum)
        loop.quit()
        return GLib.SOURCE_REMOVE

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, quit_on_signal, signum)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGUSR1, mute_audio)

    if args.parent_pid is not None:
        parent_pid: int = args.parent_pid

        def check_parent() -> bool:
            if os.getppid() != parent_pid:
                log.warning("parent %d is gone: exiting", parent_pid)
                loop.quit()
                return GLib.SOURCE_REMOVE
            return GLib.SOURCE_CONTINUE

        GLib.timeout_add(500, check_parent)

    bound = server.get_bound_port()
    log.info(
        "serving %s %dx%d@%d %s%s on port %d%s",
        ", ".join(cfg.mounts),
        cfg.width,
        cfg.height,
        cfg.fps,
        f"clip {cfg.clip}" if cfg.clip else cfg.codec,
        f" + {cfg.audio} audio" if cfg.audio else "",
        bound,
        " with basic auth" if permissions is not None else "",
    )
    # The READY line is this child's protocol with its parent, not a log record.
    sys.stdout.write(f"{_READY_PREFIX}rtsp://{_url_host(cfg.host)}:{bound}\n")
    sys.stdout.flush()
    loop.run()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    sys.exit(main())
