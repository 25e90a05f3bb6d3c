"""``streamwarden chaos``: every real camera failure, injected on a seeded schedule, and what it cost.

One process, loopback only, bounded in time. N streams run in one engine with recording on: half
RTSP (each through its own ``FaultProxy`` to its own test camera, over TCP, with credentials), half
looping files (each its own copy). Faults are drawn in a seeded order from ``FAULT_KINDS``, each on
one stream that is playing steadily, at most one fault per stream at a time. Every fault is healed
after its hold time; the stream must be PLAYING again (2 s without interruption) before it can be
picked again. After the fault phase an optional churn phase adds and removes streams on a fresh
engine while others run.

What is measured (and how exactly):

- detection latency: fault injected -> the stream's first transition out of PLAYING;
- recovery time: fault healed (for instant faults: injected) -> the PLAYING that ended the outage;
- frames lost outside fault windows (injection -> release of the stream), two ways:
  * wire -> engine (RTSP): the proxy counts every video frame it hands the engine (RTP marker bit,
    exact); the engine counts frames at its tee. Counts are snapshotted when a fault starts and
    when its stream is released; loss inside fault windows is set apart per fault type, the rest
    (steady time) must be 0. The start is exact (0/0) and so is the end: the proxies are
    blackholed and the engine drained before the last count. Measured in-flight skew at a
    snapshot while playing: 0 frames (TCP, one process).
  * engine -> disk (all streams): every recorded file is read packet by packet (ffprobe); a
    timestamp step over 1.5 frame durations inside a file is a hole (segments are closed at every
    outage, so a hole inside a file is a loss the engine did not see as an outage). Frames that reached the
    engine but not a file (the recorder waits for a keyframe after each reconnect) are reported
    per stream, not hidden. A hole is placed in wall time from the file name's start time plus
    its timestamp (+-1.5 s) and attributed to the fault window it falls in, if any.
- unplayable files (ffprobe fails or finds no video), ``.part`` leftovers after the stop;
- unhandled exceptions: log records at ERROR with exc_info, ``threading.excepthook`` and
  ``sys.excepthook`` calls (the one exception injected on purpose is counted apart);
- credentials: every camera password ever used is searched for in the log file, the events and
  the API's output (streams, events, metrics);
- streams not PLAYING at the end; RSS, open fds and threads at start and end.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from streamwarden.config import (
    EngineConfig,
    RecordingConfig,
    StreamSpec,
    parse_stream_spec,
)
from streamwarden.engine import Engine
from streamwarden.state import UP_STATES, TransitionEvent
from streamwarden.testing.camera import CameraProcess, free_port
from streamwarden.testing.fakertsp import FakeRtspServer
from streamwarden.testing.faultproxy import Direction, FaultProxy

log = logging.getLogger(__name__)

__all__ = [
    "FAULT_KINDS",
    "ChaosOptions",
    "ChaosReport",
    "ChurnResult",
    "ProcessSample",
    "run_chaos",
    "run_churn",
]

FPS = 25
WIDTH, HEIGHT = 320, 240
SETTLE_SECONDS = 2.0  # a stream counts as recovered after this long PLAYING without interruption
RECOVERY_CAP = 30.0  # a fault whose stream is not back within this is reported as not recovered
START_TIMEOUT = 30.0
HOLE_FACTOR = 1.5
PROBE_ARGS = (
    "ffprobe",
    "-v",
    "error",
    "-select_streams",
    "v:0",
    "-show_entries",
    "packet=pts_time",
    "-of",
    "csv=p=0",
)  # a timestamp step over 1.5 frame durations inside a file is a hole

RECOVERY: dict[str, Any] = {
    "backoff": {"initial_seconds": 0.25, "multiplier": 2, "max_seconds": 2.0, "jitter": "equal"},
    "breaker": {"failure_threshold": 20, "open_seconds": 2, "max_open_seconds": 5},
    "quarantine": {"trips": 100, "window_seconds": 60, "quarantine_seconds": 5},
    "stall_timeout_seconds": 2,
}


class ChaosInjectedError(RuntimeError):
    """Raised on purpose inside a stream's callback; not an unhandled exception of the engine."""


# -- fault catalogue ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaultKind:
    name: str
    target: str  # "rtsp" | "file" | "any"
    outage: bool | None  # True: must interrupt the stream; False: must not; None: may
    hold: tuple[float, float]  # seconds the fault stays before it is healed (0: instant)
    description: str


FAULT_KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind("net_reset", "rtsp", True, (0, 0), "proxy RSTs the connection (SO_LINGER 0)"),
        FaultKind("net_blackhole", "rtsp", True, (3, 5), "connection open, nothing forwarded"),
        FaultKind("net_latency_jitter", "rtsp", False, (4, 6), "150 ms +- 100 ms per chunk"),
        FaultKind("net_bandwidth", "rtsp", None, (3, 5), "bandwidth limited to 8 kB/s (~1/5 of the stream)"),
        FaultKind("net_slow_close", "rtsp", True, (2, 3), "camera killed, its FIN held back 4 s"),
        FaultKind("net_half_open", "rtsp", True, (0, 0), "FIN in one direction only"),
        FaultKind("cam_kill", "rtsp", True, (2, 4), "camera SIGKILLed, restarted after the hold"),
        FaultKind("cam_freeze", "rtsp", True, (3, 5), "camera SIGSTOPped, SIGCONT after the hold"),
        FaultKind("cam_new_params", "rtsp", True, (0, 0), "camera restarted at another resolution"),
        FaultKind("cam_credentials", "rtsp", True, (1.5, 2.5), "password changed; PATCHed via the API"),
        FaultKind("rtsp_404", "rtsp", True, (2, 3), "server answers DESCRIBE with 404"),
        FaultKind("rtsp_454", "rtsp", True, (2, 3), "server answers PLAY with 454"),
        FaultKind("rtsp_461", "rtsp", True, (2, 3), "server answers SETUP with 461"),
        FaultKind("rtsp_503", "rtsp", True, (2, 3), "server answers DESCRIBE with 503"),
        FaultKind("rtsp_garbage", "rtsp", True, (2, 3), "random bytes on the RTSP port"),
        FaultKind("file_corrupt", "file", None, (5, 7), "16 KiB of random bytes in the middle"),
        FaultKind("file_truncate", "file", True, (5, 7), "file cut to 40 %"),
        FaultKind("file_replace", "file", False, (0, 0), "file atomically replaced by another clip"),
        FaultKind("file_delete", "file", True, (5, 7), "file deleted, restored after the hold"),
        FaultKind("rec_dir_removed", "any", False, (0, 0), "the stream's recording folder moved away"),
        FaultKind("callback_exception", "any", True, (0, 0), "exception raised in the stream's tick"),
    )
}


@dataclass
class Fault:
    kind: FaultKind
    stream: str
    injected_at: float
    heal_at: float
    healed_at: float | None = None
    detected_at: float | None = None
    recovered_at: float | None = None
    released_at: float | None = None
    left_playing: bool = False
    note: str = ""
    heal: Callable[[], None] | None = None
    snap_inject: tuple[int, int] | None = None  # (frames forwarded by the proxy, frames ingested)
    snap_release: tuple[int, int] | None = None

    @property
    def detection(self) -> float | None:
        return None if self.detected_at is None else self.detected_at - self.injected_at

    @property
    def recovery(self) -> float | None:
        if self.recovered_at is None or self.healed_at is None:
            return None
        return max(0.0, self.recovered_at - self.healed_at)


# -- process figures ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessSample:
    rss_kib: int
    fds: int
    python_threads: int
    native_threads: int

    @classmethod
    def take(cls) -> ProcessSample:
        rss = 0
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else -1
        tasks = len(os.listdir("/proc/self/task")) if Path("/proc/self/task").exists() else -1
        return cls(rss_kib=rss, fds=fds, python_threads=threading.active_count(), native_threads=tasks)


# -- unhandled exceptions ------------------------------------------------------------------------------
class ExceptionCounter(logging.Handler):
    """Counts ERROR records with exc_info, and the thread/sys excepthooks while installed."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.unhandled: list[str] = []
        self.injected = 0
        self.error_lines = 0
        self._old_thread_hook = threading.excepthook
        self._old_sys_hook = sys.excepthook

    def emit(self, record: logging.LogRecord) -> None:
        self.error_lines += 1
        if record.exc_info and record.exc_info[0] is not None:
            if issubclass(record.exc_info[0], ChaosInjectedError):
                self.injected += 1
            else:
                self.unhandled.append(f"{record.name}: {record.getMessage()} ({record.exc_info[0].__name__})")

    def _thread_hook(self, args: threading.ExceptHookArgs) -> None:
        self.unhandled.append(f"thread {args.thread.name if args.thread else '?'}: {args.exc_type.__name__}")
        self._old_thread_hook(args)

    def _sys_hook(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, ChaosInjectedError):
            self.injected += 1
        else:
            self.unhandled.append(f"sys.excepthook: {exc_type.__name__}: {exc}")
        self._old_sys_hook(exc_type, exc, tb)

    def install(self) -> None:
        logging.getLogger().addHandler(self)
        threading.excepthook = self._thread_hook
        sys.excepthook = self._sys_hook

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)
        threading.excepthook = self._old_thread_hook
        sys.excepthook = self._old_sys_hook


# -- transitions ---------------------------------------------------------------------------------------
class Transitions:
    """Every transition of every stream (the listener runs on the engine's loop thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[TransitionEvent]] = {}

    def __call__(self, stream_id: str, event: TransitionEvent) -> None:
        with self._lock:
            self._events.setdefault(stream_id, []).append(event)

    def of(self, stream_id: str) -> list[TransitionEvent]:
        with self._lock:
            return list(self._events.get(stream_id, ()))

    def playing_since(self, stream_id: str) -> float | None:
        """When the stream last came up (PLAYING or DEGRADED), if it is still up."""
        events = self.of(stream_id)
        if not events or events[-1].to_state not in UP_STATES:
            return None
        last_up = events[-1]
        for event in reversed(events):
            if event.from_state not in UP_STATES:
                return event.monotonic if event.to_state in UP_STATES else last_up.monotonic
        return events[0].monotonic

    def all_text(self) -> str:
        with self._lock:
            return json.dumps({k: [e.as_dict() for e in v] for k, v in self._events.items()}, default=str)


# -- targets -------------------------------------------------------------------------------------------
@dataclass
class RtspTarget:
    stream_id: str
    camera: CameraProcess
    proxy: FaultProxy
    user: str
    password: str
    wide: bool = False


@dataclass
class FileTarget:
    stream_id: str
    path: Path
    original: Path
    alternate: Path


@dataclass
class ChaosOptions:
    streams: int = 8
    duration: float = 120.0
    seed: int = 1
    churn_cycles: int = 0
    workdir: Path | None = None
    kinds: tuple[str, ...] = tuple(FAULT_KINDS)
    gap: tuple[float, float] = (0.3, 1.5)  # seconds between two injections


@dataclass
class KindSummary:
    name: str
    description: str
    expected_outage: bool | None
    count: int = 0
    outages: int = 0
    detections: list[float] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    not_recovered: int = 0
    unexpected: int = 0  # outage where none was expected, or none where one was
    wire_loss_in_window: int = 0
    holes_in_window: int = 0  # frames missing inside recorded files during this kind's windows


@dataclass
class ChurnResult:
    cycles: int
    seconds: float
    rss_growth_kib: int
    fd_growth: int
    python_thread_growth: int
    native_thread_growth: int
    max_gap_others: float
    others_recoveries: int
    before: ProcessSample
    after: ProcessSample
    unhandled: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return (
            not self.unhandled
            and self.rss_growth_kib < 10 * 1024
            and self.fd_growth <= 0
            and self.python_thread_growth <= 0
            and self.max_gap_others < 0.5
            and self.others_recoveries == 0
        )


@dataclass
class ChaosReport:
    options: ChaosOptions
    started: str
    seconds: float
    faults: list[Fault]
    kinds: dict[str, KindSummary]
    streams: dict[str, dict[str, Any]]
    files_checked: int
    unplayable: list[str]
    part_leftovers: list[str]
    moved_parts: list[str]  # .part files in folders moved away by rec_dir_removed (expected)
    holes: dict[str, int]  # stream -> frames missing inside recorded files, outside fault windows
    wire_forwarded: int
    wire_stale: int  # frames written to connections the engine had already replaced
    wire_ingested: int
    wire_loss_outage: int
    wire_loss_steady: int
    unhandled: list[str]
    injected_exceptions: int
    error_lines: int
    credential_leaks: list[str]
    not_playing: list[str]
    before: ProcessSample
    after: ProcessSample
    churn: ChurnResult | None = None
    gst_version: str = ""

    @property
    def frames_lost_outside_outages(self) -> int:
        return self.wire_loss_steady + sum(self.holes.values())

    def ok(self) -> bool:
        return (
            not self.unplayable
            and not self.part_leftovers
            and not self.unhandled
            and not self.credential_leaks
            and not self.not_playing
            and self.frames_lost_outside_outages == 0
            and all(k.not_recovered == 0 for k in self.kinds.values())
            and (self.churn is None or self.churn.ok())
        )


# -- the runner ----------------------------------------------------------------------------------------
class ChaosRun:
    def __init__(self, options: ChaosOptions, base: Path) -> None:
        self.options = options
        self.base = base
        self.rng = random.Random(options.seed)
        self.rec_dir = base / "rec"
        self.moved_dir = base / "rec-moved"
        self.transitions = Transitions()
        self.rtsp: dict[str, RtspTarget] = {}
        self.files: dict[str, FileTarget] = {}
        self.fakes: dict[str, FakeRtspServer] = {}
        self.engine: Engine | None = None
        self.client: Any = None  # fastapi TestClient
        self.secrets: set[str] = set()
        self.faults: list[Fault] = []
        self.busy: dict[str, Fault] = {}
        self._moves = 0
        self.wall_offset = time.time() - time.monotonic()

    # -- set-up --------------------------------------------------------------------------------
    def setup(self) -> None:
        from streamwarden.media.clip import ensure_test_clip

        clips = self.base / "clips"
        clip = ensure_test_clip(
            clips / "clip.mp4", seconds=4.0, width=WIDTH, height=HEIGHT, fps=FPS, key_int=FPS
        )
        alternate = ensure_test_clip(
            clips / "alternate.mp4", seconds=3.0, width=WIDTH, height=HEIGHT, fps=FPS, key_int=FPS
        )
        n_rtsp = self.options.streams // 2
        n_file = self.options.streams - n_rtsp
        for index in range(n_file):
            stream_id = f"file{index}"
            path = self.base / "media" / f"{stream_id}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clip, path)
            self.files[stream_id] = FileTarget(stream_id, path, clip, alternate)
        for index in range(n_rtsp):
            stream_id = f"cam{index}"
            password = "pw-" + secrets.token_hex(6)
            self.secrets.add(password)
            camera = CameraProcess(
                free_port(), user="chaos", password=password, width=WIDTH, height=HEIGHT, fps=FPS, bitrate=300
            )
            camera.start()
            proxy = FaultProxy(
                ("127.0.0.1", camera.port), seed=self.rng.randrange(1 << 30), name=f"proxy-{stream_id}"
            )
            proxy.start()
            self.rtsp[stream_id] = RtspTarget(stream_id, camera, proxy, "chaos", password)
        for status in ("404", "454", "461", "503"):
            self.fakes[status] = FakeRtspServer.failing(int(status))
        self.fakes["garbage"] = FakeRtspServer(garbage=True)
        for fake in self.fakes.values():
            fake.start()

    def spec_for(self, stream_id: str) -> StreamSpec:
        record = {"dir": str(self.rec_dir), "format": "mkv", "segment_seconds": 10}
        if stream_id in self.files:
            source: dict[str, Any] = {"type": "file", "path": str(self.files[stream_id].path)}
        else:
            target = self.rtsp[stream_id]
            source = {
                "type": "rtsp",
                "uri": target.proxy.url(target.camera.url()),
                "transport": "tcp",
                "connect_timeout_seconds": 3,
            }
        return parse_stream_spec({"id": stream_id, "source": source, "record": record, "recovery": RECOVERY})

    def start_engine(self) -> Engine:
        from fastapi.testclient import TestClient

        from streamwarden.api import create_app
        from streamwarden.config import ApiConfig

        config = EngineConfig.model_validate({"reconnect_budget": {"rate_per_second": 50, "burst": 20}})
        recording = RecordingConfig(min_free_bytes=0, check_interval_seconds=1.0)
        engine = Engine(config, recording=recording, name="chaos")
        app = create_app(engine, config=ApiConfig(), base_dir=self.base)
        engine.add_listener(self.transitions)
        engine.start()
        self.engine = engine
        self.client = TestClient(app)
        self.client.__enter__()
        for stream_id in [*self.files, *self.rtsp]:
            response = self.client.post("/streams", json=json.loads(_spec_json(self.spec_for(stream_id))))
            if response.status_code != 201:
                raise RuntimeError(f"could not add {stream_id}: {response.status_code} {response.text}")
        return engine

    def wait_all_playing(self, timeout: float) -> list[str]:
        assert self.engine is not None
        deadline = time.monotonic() + timeout
        ids = self.engine.stream_ids()
        while time.monotonic() < deadline:
            waiting = [s for s in ids if self.engine.state(s) not in UP_STATES]
            if not waiting:
                return []
            time.sleep(0.1)
        return [s for s in ids if self.engine.state(s) not in UP_STATES]

    def fault_at(self, stream_id: str, wall: float, margin: float = 1.5) -> Fault | None:
        """The fault of ``stream_id`` whose window (injection to release, +- margin) holds ``wall``."""
        offset = self.wall_offset
        for fault in self.faults:
            if fault.stream != stream_id:
                continue
            end = fault.released_at if fault.released_at is not None else time.monotonic()
            if fault.injected_at + offset - margin <= wall <= end + offset + margin:
                return fault
        return None

    # -- snapshots -------------------------------------------------------------------------------
    def snapshot(self, stream_id: str, samples: int = 6) -> tuple[int, int] | None:
        """(frames the proxy forwarded, frames the engine ingested), taken when nothing is in flight.

        The engine is read before the proxy, so forwarded - ingested is never below the frames in
        flight; of a few samples ~20 ms apart (half a frame interval) the smallest difference is
        the one taken between two frames, with none in flight.
        """
        assert self.engine is not None
        target = self.rtsp.get(stream_id)
        if target is None:
            return None
        best: tuple[int, int] | None = None
        for index in range(samples):
            ingested = self.engine.health(stream_id).frames_total
            forwarded = target.proxy.stats().frames_forwarded
            if best is None or forwarded - ingested < best[0] - best[1]:
                best = (forwarded, ingested)
            if index + 1 < samples:
                time.sleep(0.02)
        return best

    # -- the fault phase ---------------------------------------------------------------------------
    def run_faults(self, duration: float) -> None:
        kinds = [FAULT_KINDS[k] for k in self.options.kinds]
        order: list[FaultKind] = []
        started = time.monotonic()
        next_at = started + 1.0
        while True:
            now = time.monotonic()
            self._progress(now)
            if now - started >= duration:
                break
            if now >= next_at:
                if not order:
                    order = list(kinds)
                    self.rng.shuffle(order)
                for position, kind in enumerate(order):
                    stream = self._eligible(kind, now)
                    if stream is not None:
                        order.pop(position)
                        self._inject(kind, stream)
                        break
                next_at = time.monotonic() + self.rng.uniform(*self.options.gap)
            time.sleep(0.05)
        # Heal everything, let every stream settle (bounded).
        deadline = time.monotonic() + RECOVERY_CAP + 10
        while self.busy and time.monotonic() < deadline:
            for fault in list(self.busy.values()):
                fault.heal_at = min(fault.heal_at, time.monotonic())
            self._progress(time.monotonic())
            time.sleep(0.05)

    def _eligible(self, kind: FaultKind, now: float) -> str | None:
        pool = {"rtsp": list(self.rtsp), "file": list(self.files), "any": [*self.rtsp, *self.files]}[
            kind.target
        ]
        ready = []
        for stream_id in pool:
            since = self.transitions.playing_since(stream_id)
            if stream_id not in self.busy and since is not None and now - since >= SETTLE_SECONDS:
                ready.append(stream_id)
        return self.rng.choice(ready) if ready else None

    def _inject(self, kind: FaultKind, stream_id: str) -> None:
        hold = self.rng.uniform(*kind.hold) if kind.hold[1] > 0 else 0.0
        snap = self.snapshot(stream_id)
        now = time.monotonic()
        fault = Fault(kind, stream_id, injected_at=now, heal_at=now + hold, snap_inject=snap)
        self.faults.append(fault)
        self.busy[stream_id] = fault
        log.info("chaos: injecting %s on %s (hold %.1f s)", kind.name, stream_id, hold)
        try:
            fault.heal = getattr(self, f"_fault_{kind.name}")(stream_id, fault)
        except Exception as exc:
            fault.note = f"injection failed: {type(exc).__name__}: {exc}"
            log.warning("chaos: %s on %s could not be injected: %s", kind.name, stream_id, exc)
        if fault.heal is None:
            fault.healed_at = fault.injected_at if hold == 0 else None

    def _progress(self, now: float) -> None:
        for stream_id, fault in list(self.busy.items()):
            if fault.healed_at is None and now >= fault.heal_at:
                if fault.heal is not None:
                    try:
                        fault.heal()
                    except Exception as exc:
                        fault.note += f" heal failed: {type(exc).__name__}: {exc}"
                        log.warning("chaos: healing %s on %s failed: %s", fault.kind.name, stream_id, exc)
                fault.healed_at = time.monotonic()
            if fault.healed_at is None:
                continue
            events = [e for e in self.transitions.of(stream_id) if e.monotonic >= fault.injected_at]
            left = [e for e in events if e.from_state in UP_STATES and e.to_state not in UP_STATES]
            if left and fault.detected_at is None:
                fault.detected_at = left[0].monotonic
                fault.left_playing = True
            since = self.transitions.playing_since(stream_id)
            settled = since is not None and time.monotonic() - since >= SETTLE_SECONDS
            if settled and time.monotonic() - fault.healed_at >= SETTLE_SECONDS:
                if fault.left_playing:
                    back = [e for e in events if e.to_state in UP_STATES and e.from_state not in UP_STATES]
                    fault.recovered_at = back[-1].monotonic if back else since
                self._release(fault)
            elif time.monotonic() - fault.healed_at > RECOVERY_CAP:
                fault.note += f" not PLAYING {RECOVERY_CAP:.0f} s after the heal"
                self._release(fault)

    def _release(self, fault: Fault) -> None:
        fault.released_at = time.monotonic()
        fault.snap_release = self.snapshot(fault.stream)
        self.busy.pop(fault.stream, None)

    # -- fault implementations: each returns its heal (None: nothing to undo) -------------------------
    def _fault_net_reset(self, stream_id: str, _fault: Fault) -> None:
        self.rtsp[stream_id].proxy.reset()

    def _fault_net_blackhole(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        proxy = self.rtsp[stream_id].proxy
        proxy.blackhole(True)
        return lambda: proxy.blackhole(False)

    def _fault_net_latency_jitter(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        proxy = self.rtsp[stream_id].proxy
        proxy.set_latency(0.15, jitter=0.1)
        return lambda: proxy.set_latency(0)

    def _fault_net_bandwidth(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        proxy = self.rtsp[stream_id].proxy
        proxy.set_bandwidth(8_000)
        return lambda: proxy.set_bandwidth(None)

    def _fault_net_slow_close(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        target = self.rtsp[stream_id]
        target.proxy.set_slow_close(4.0)
        target.camera.kill()

        def heal() -> None:
            target.camera.start()
            target.proxy.set_slow_close(0)

        return heal

    def _fault_net_half_open(self, stream_id: str, fault: Fault) -> None:
        direction = self.rng.choice([Direction.UPSTREAM, Direction.DOWNSTREAM])
        fault.note = f"FIN {direction}"
        self.rtsp[stream_id].proxy.half_close(direction)

    def _fault_cam_kill(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        camera = self.rtsp[stream_id].camera
        camera.kill()
        return camera.start

    def _fault_cam_freeze(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        camera = self.rtsp[stream_id].camera
        camera.pause()
        return camera.resume

    def _fault_cam_new_params(self, stream_id: str, fault: Fault) -> None:
        target = self.rtsp[stream_id]
        target.wide = not target.wide
        width, height = (352, 288) if target.wide else (WIDTH, HEIGHT)
        fault.note = f"{width}x{height}"
        target.camera.restart(width=width, height=height)

    def _fault_cam_credentials(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        target = self.rtsp[stream_id]
        target.password = "pw-" + secrets.token_hex(6)
        self.secrets.add(target.password)
        target.camera.restart(password=target.password)

        def heal() -> None:  # the operator fixes the config through the API
            uri = target.proxy.url(target.camera.url())
            response = self.client.patch(f"/streams/{stream_id}", json={"source": {"uri": uri}})
            if response.status_code != 200:
                raise RuntimeError(f"PATCH refused: {response.status_code}")

        return heal

    def _redirect(self, stream_id: str, fake: str) -> Callable[[], None]:
        target = self.rtsp[stream_id]
        server = self.fakes[fake]
        target.proxy.set_upstream("127.0.0.1", server.port)
        target.proxy.reset()
        return lambda: target.proxy.set_upstream("127.0.0.1", target.camera.port)

    def _fault_rtsp_404(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        return self._redirect(stream_id, "404")

    def _fault_rtsp_454(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        return self._redirect(stream_id, "454")

    def _fault_rtsp_461(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        return self._redirect(stream_id, "461")

    def _fault_rtsp_503(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        return self._redirect(stream_id, "503")

    def _fault_rtsp_garbage(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        return self._redirect(stream_id, "garbage")

    def _restore(self, target: FileTarget) -> Callable[[], None]:
        def heal() -> None:
            staging = target.path.with_suffix(".restore")
            shutil.copyfile(target.original, staging)
            staging.replace(target.path)

        return heal

    def _fault_file_corrupt(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        target = self.files[stream_id]
        data = bytearray(target.path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 16384] = self.rng.randbytes(min(16384, len(data) - middle))
        staging = target.path.with_suffix(".corrupt")
        staging.write_bytes(bytes(data))
        staging.replace(target.path)
        return self._restore(target)

    def _fault_file_truncate(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        target = self.files[stream_id]
        size = target.path.stat().st_size
        with target.path.open("r+b") as handle:
            handle.truncate(int(size * 0.4))
        return self._restore(target)

    def _fault_file_replace(self, stream_id: str, _fault: Fault) -> None:
        target = self.files[stream_id]
        staging = target.path.with_suffix(".replace")
        current = target.path.read_bytes()
        source = target.alternate if current == target.original.read_bytes() else target.original
        shutil.copyfile(source, staging)
        staging.replace(target.path)

    def _fault_file_delete(self, stream_id: str, _fault: Fault) -> Callable[[], None]:
        target = self.files[stream_id]
        target.path.unlink()
        return self._restore(target)

    def _fault_rec_dir_removed(self, stream_id: str, _fault: Fault) -> None:
        source = self.rec_dir / stream_id
        if source.exists():
            self._moves += 1
            self.moved_dir.mkdir(parents=True, exist_ok=True)
            source.rename(self.moved_dir / f"{stream_id}-{self._moves}")

    def _fault_callback_exception(self, stream_id: str, _fault: Fault) -> None:
        engine = self.engine
        assert engine is not None

        def arm() -> None:
            supervisor = engine._streams[stream_id]
            original = supervisor.tick

            def boom() -> None:
                setattr(supervisor, "tick", original)  # noqa: B010 - once
                raise ChaosInjectedError(f"chaos: exception injected into {stream_id}'s tick")

            setattr(supervisor, "tick", boom)  # noqa: B010 - an instance override of the method

        engine.loop.call_sync(arm)

    # -- the end -------------------------------------------------------------------------------------
    def drain_wire(self) -> tuple[int, int, int]:
        """Blackhole every proxy, let the engine take what is in flight, then count (exact).

        Returns (forwarded on the engine's current connections, ingested, written to
        connections the engine had already replaced)."""
        assert self.engine is not None
        for target in self.rtsp.values():
            target.proxy.blackhole(True, Direction.DOWNSTREAM)
        time.sleep(0.8)
        forwarded = ingested = stale = 0
        for stream_id, target in self.rtsp.items():
            stats = target.proxy.stats()
            forwarded += stats.frames_forwarded
            stale += stats.frames_stale
            ingested += self.engine.health(stream_id).frames_total
        return forwarded, ingested, stale

    def teardown(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.__exit__(None, None, None)
        if self.engine is not None:
            self.engine.stop(timeout=20)
        for target in self.rtsp.values():
            target.proxy.stop()
            target.camera.close()
        for fake in self.fakes.values():
            fake.stop()


def _spec_json(spec: StreamSpec) -> str:
    from streamwarden.persist import json_with_secrets

    return json.dumps(spec.model_dump(mode="python"), default=json_with_secrets)


# -- recorded files ------------------------------------------------------------------------------------
def probe_file(path: Path, timeout: float = 60) -> tuple[bool, int, list[tuple[float, int]]]:
    """(playable, frames, holes) as ffprobe reads ``path``; a hole is (pts before it, frames missing)."""
    try:
        proc = subprocess.run(
            [*PROBE_ARGS, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False, 0, []
    if proc.returncode != 0:
        return False, 0, []
    times = []
    for line in proc.stdout.splitlines():
        value = line.split(",")[0].strip()
        if value and value != "N/A":
            with contextlib.suppress(ValueError):
                times.append(float(value))
    if not times:
        return False, 0, []
    times.sort()
    holes = []
    step = 1.0 / FPS
    for a, b in itertools.pairwise(times):
        if b - a > HOLE_FACTOR * step:
            holes.append((a, round((b - a) / step) - 1))
    return True, len(times), holes


def file_start(path: Path) -> float | None:
    """UTC start of a segment from its name (``<id>-YYYYmmddTHHMMSSZ[...]``), as epoch seconds."""
    stamp = path.name.split("-", 1)[1][:16] if "-" in path.name else ""
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def recorded_files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.exists():
            yield from sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".mkv", ".mp4"))


# -- churn ---------------------------------------------------------------------------------------------
def run_churn(
    cycles: int,
    base: Path,
    *,
    seed: int = 1,
    progress: Callable[[int], None] | None = None,
    camera: CameraProcess | None = None,
    record_every: int = 5,
) -> ChurnResult:
    """``cycles`` add/remove cycles on a fresh engine while three other streams play.

    Cycles alternate file and RTSP sources; every other cycle waits for the first frame before the
    removal (a playing teardown), the rest remove at once (a connecting teardown); every
    ``record_every``-th records (0: none). Before/after figures are taken after 10 warm-up
    cycles, once disposals have finished.
    """
    from streamwarden.media.clip import ensure_test_clip

    rng = random.Random(seed)
    clip = ensure_test_clip(
        base / "clips" / "clip.mp4", seconds=4.0, width=WIDTH, height=HEIGHT, fps=FPS, key_int=FPS
    )
    own_camera = camera is None
    cam = camera or CameraProcess(
        free_port(), mounts=("/steady", "/churn"), width=WIDTH, height=HEIGHT, bitrate=300
    )
    if own_camera:
        cam.start()
    recovery = {**RECOVERY, "stall_timeout_seconds": 2}

    def file_spec(stream_id: str, record: bool = False) -> StreamSpec:
        data: dict[str, Any] = {
            "id": stream_id,
            "source": {"type": "file", "path": str(clip)},
            "recovery": recovery,
        }
        if record:
            data["record"] = {"dir": str(base / "churn-rec"), "format": "mkv", "segment_seconds": 5}
        return parse_stream_spec(data)

    def rtsp_spec(stream_id: str, mount: str, record: bool = False) -> StreamSpec:
        data: dict[str, Any] = {
            "id": stream_id,
            "source": {
                "type": "rtsp",
                "uri": cam.url(mount),
                "transport": "tcp",
                "connect_timeout_seconds": 3,
            },
            "recovery": recovery,
        }
        if record:
            data["record"] = {"dir": str(base / "churn-rec"), "format": "mkv", "segment_seconds": 5}
        return parse_stream_spec(data)

    steady = ["steady-file-a", "steady-file-b", "steady-cam"]
    counter = ExceptionCounter()
    counter.install()
    budget = EngineConfig.model_validate({"reconnect_budget": {"rate_per_second": 1000, "burst": 1000}})
    engine = Engine(budget, recording=RecordingConfig(min_free_bytes=0), name="churn")
    engine.start()
    try:
        engine.add_stream(file_spec("steady-file-a"))
        engine.add_stream(file_spec("steady-file-b"))
        engine.add_stream(rtsp_spec("steady-cam", "/steady"))
        _wait(
            lambda: all(engine.state(s) in UP_STATES for s in steady),
            START_TIMEOUT,
            "steady streams",
        )

        def cycle(index: int) -> None:
            record = record_every > 0 and index % record_every == 0
            spec = file_spec("churn", record) if index % 2 == 0 else rtsp_spec("churn", "/churn", record)
            engine.add_stream(spec)
            if rng.random() < 0.5:
                with contextlib.suppress(TimeoutError):
                    _wait(lambda: engine.health("churn").frames_total > 0, 5.0, "churn first frame")
            engine.remove_stream("churn")

        warmup = min(10, cycles)
        for index in range(warmup):
            cycle(index)
        _quiesce(engine)
        before = ProcessSample.take()
        started = time.monotonic()
        for index in range(warmup, cycles):
            cycle(index)
            if progress is not None and index % 50 == 0:
                progress(index)
        seconds = time.monotonic() - started
        _quiesce(engine)
        after = ProcessSample.take()
        gaps = [engine.health(s).max_frame_gap_seconds for s in steady]
        recoveries = sum(engine.health(s).recoveries_total for s in steady)
        not_playing = [s for s in steady if engine.state(s) not in UP_STATES]
        if not_playing:
            recoveries += len(not_playing)
    finally:
        engine.stop(timeout=20)
        counter.uninstall()
        if own_camera:
            cam.close()
    return ChurnResult(
        cycles=cycles,
        seconds=round(seconds, 1),
        rss_growth_kib=after.rss_kib - before.rss_kib,
        fd_growth=after.fds - before.fds,
        python_thread_growth=after.python_threads - before.python_threads,
        native_thread_growth=after.native_threads - before.native_threads,
        max_gap_others=max(gaps),
        others_recoveries=recoveries,
        before=before,
        after=after,
        unhandled=list(counter.unhandled),
    )


def _quiesce(engine: Engine, timeout: float = 20.0) -> None:
    """Wait until no disposal thread runs and the recorders' work is done (bounded)."""
    deadline = time.monotonic() + timeout
    while engine.pending_disposals() and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.recording.flush(max(0.5, deadline - time.monotonic()))
    time.sleep(0.3)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


# -- the whole run -------------------------------------------------------------------------------------
def run_chaos(options: ChaosOptions, progress: Callable[[str], None] | None = None) -> ChaosReport:
    """Set up, inject faults for ``options.duration``, tear down, and measure; never raises on a
    fault that was not survived (that is what the report says), only on a broken set-up."""
    say = progress or (lambda _text: None)
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)
    with contextlib.ExitStack() as stack:
        if options.workdir is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="streamwarden-chaos-")))
        else:
            base = options.workdir
            base.mkdir(parents=True, exist_ok=True)
        counter = ExceptionCounter()
        counter.install()
        stack.callback(counter.uninstall)
        run = ChaosRun(options, base)
        started_wall = datetime.now(UTC).isoformat(timespec="seconds")
        started = time.monotonic()
        try:
            say(f"setting up {options.streams} streams in {base}")
            run.setup()
            engine = run.start_engine()
            waiting = run.wait_all_playing(START_TIMEOUT)
            if waiting:
                raise RuntimeError(f"streams not PLAYING at the start: {waiting}")
            time.sleep(SETTLE_SECONDS)
            before = ProcessSample.take()
            say(f"injecting faults for {options.duration:.0f} s (seed {options.seed})")
            run.run_faults(options.duration)
            waiting = run.wait_all_playing(RECOVERY_CAP)
            after = ProcessSample.take()
            say("draining and checking")
            forwarded, ingested, stale = run.drain_wire()
            states = {stream_id: str(engine.state(stream_id)) for stream_id in engine.stream_ids()}
            for stream_id in states:  # final counts: nothing is ingested after them
                engine.stop_stream(stream_id)
            streams = {}
            for stream_id, state in states.items():
                info = engine.info(stream_id)
                streams[stream_id] = {
                    "state": state,
                    "frames": info["health"]["frames_total"],
                    "recoveries": info["health"]["recoveries_total"],
                    "attempts": info["health"]["attempts_total"],
                    "errors": info["health"]["errors_by_category"],
                }
            leaks = _credential_leaks(run, base)
        finally:
            run.teardown()
        seconds = time.monotonic() - started
        kinds = _summaries(run.faults, options.kinds)
        unplayable: list[str] = []
        part_leftovers: list[str] = []
        moved_parts: list[str] = []
        holes: dict[str, int] = {}  # outside every fault window
        recorded: dict[str, int] = {}
        files = list(recorded_files(run.rec_dir, run.moved_dir))
        for path in files:
            relative = str(path.relative_to(base))
            if ".part." in path.name:
                # A folder moved away under an open segment cannot have it renamed back: expected.
                (moved_parts if path.is_relative_to(run.moved_dir) else part_leftovers).append(relative)
            playable, frames, file_holes = probe_file(path)
            stream_id = _stream_of(path, run)
            if not playable:
                unplayable.append(relative)
            recorded[stream_id] = recorded.get(stream_id, 0) + frames
            start = file_start(path)
            for pts, missing in file_holes:
                fault = None if start is None else run.fault_at(stream_id, start + pts)
                if fault is None:
                    holes[stream_id] = holes.get(stream_id, 0) + missing
                else:
                    kinds[fault.kind.name].holes_in_window += missing
        for stream_id, data in streams.items():
            data["recorded"] = recorded.get(stream_id, 0)
            data["holes"] = holes.get(stream_id, 0)
        window_loss = 0
        for fault in run.faults:
            if fault.snap_inject is None or fault.snap_release is None:
                continue
            loss = (fault.snap_release[0] - fault.snap_inject[0]) - (
                fault.snap_release[1] - fault.snap_inject[1]
            )
            window_loss += loss
            kinds[fault.kind.name].wire_loss_in_window += loss
        return ChaosReport(
            options=options,
            started=started_wall,
            seconds=round(seconds, 1),
            faults=run.faults,
            kinds=kinds,
            streams=streams,
            files_checked=len(files),
            unplayable=unplayable,
            part_leftovers=part_leftovers,
            moved_parts=moved_parts,
            holes=holes,
            wire_forwarded=forwarded,
            wire_stale=stale,
            wire_ingested=ingested,
            wire_loss_outage=window_loss,
            wire_loss_steady=(forwarded - ingested) - window_loss,
            unhandled=list(counter.unhandled),
            injected_exceptions=counter.injected,
            error_lines=counter.error_lines,
            credential_leaks=leaks,
            not_playing=waiting,
            before=before,
            after=after,
            gst_version=Gst.version_string(),
        )


def _stream_of(path: Path, run: ChaosRun) -> str:
    for stream_id in [*run.rtsp, *run.files]:
        if path.name.startswith(f"{stream_id}-"):
            return stream_id
    return "?"


def _credential_leaks(run: ChaosRun, base: Path) -> list[str]:
    """Where any camera password appears: the log file, events, the API's answers."""
    texts: dict[str, str] = {"events": run.transitions.all_text()}
    for handler in logging.getLogger().handlers:
        handler.flush()
    log_file = base / "chaos.log"
    if log_file.exists():
        texts["log"] = log_file.read_text(errors="replace")
    if run.client is not None:
        texts["GET /streams"] = run.client.get("/streams").text
        texts["GET /metrics"] = run.client.get("/metrics").text
        for stream_id in [*run.rtsp, *run.files]:
            texts[f"GET /streams/{stream_id}/events"] = run.client.get(f"/streams/{stream_id}/events").text
    return sorted({where for where, text in texts.items() for secret in run.secrets if secret in text})


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(pct) - 1]


def _summaries(faults: list[Fault], names: tuple[str, ...]) -> dict[str, KindSummary]:
    kinds = {n: KindSummary(n, FAULT_KINDS[n].description, FAULT_KINDS[n].outage) for n in names}
    for fault in faults:
        summary = kinds[fault.kind.name]
        summary.count += 1
        if fault.left_playing:
            summary.outages += 1
            if fault.detection is not None:
                summary.detections.append(fault.detection)
            if fault.recovery is not None:
                summary.recoveries.append(fault.recovery)
        if "not PLAYING" in fault.note or "failed" in fault.note:
            summary.not_recovered += 1
        if fault.kind.outage is not None and fault.left_playing != fault.kind.outage:
            summary.unexpected += 1
    return kinds


# -- output --------------------------------------------------------------------------------------------
def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:+.1f} MiB"


def kind_rows(report: ChaosReport) -> list[list[str]]:
    rows = []
    for summary in report.kinds.values():
        if summary.count == 0:
            continue
        expected = {True: "yes", False: "no", None: "may"}[summary.expected_outage]
        rows.append(
            [
                summary.name,
                str(summary.count),
                f"{summary.outages} (expected: {expected})",
                _s(_percentile(summary.detections, 50)),
                _s(_percentile(summary.detections, 95)),
                _s(_percentile(summary.recoveries, 50)),
                _s(_percentile(summary.recoveries, 95)),
                str(summary.not_recovered),
                str(summary.wire_loss_in_window)
                if any(f.kind.name == summary.name and f.stream.startswith("cam") for f in report.faults)
                else "-",
                str(summary.holes_in_window),
            ]
        )
    return rows


KIND_COLUMNS = [
    "fault",
    "count",
    "outages",
    "detect p50 s",
    "detect p95 s",
    "recover p50 s",
    "recover p95 s",
    "not recovered",
    "wire->engine lost in window",
    "missing in recordings in window",
]


def summary_rows(report: ChaosReport) -> list[tuple[str, str, str]]:
    """(check, measured, verdict) rows."""
    churn = report.churn

    def verdict(ok: bool) -> str:
        return "ok" if ok else "FAIL"

    rows = [
        (
            "frames lost outside fault windows",
            f"{report.frames_lost_outside_outages} (wire->engine {report.wire_loss_steady}, "
            f"missing inside recorded files {sum(report.holes.values())})",
            verdict(report.frames_lost_outside_outages == 0),
        ),
        (
            "frames written to connections the engine had replaced (old attempts being torn down)",
            str(report.wire_stale),
            "info",
        ),
        (
            "frames the proxies forwarded / the engine ingested",
            f"{report.wire_forwarded} / {report.wire_ingested} "
            f"(lost inside fault windows: {report.wire_loss_outage})",
            "info",
        ),
        (
            "recorded files unplayable (ffprobe)",
            f"{len(report.unplayable)} of {report.files_checked}",
            verdict(not report.unplayable),
        ),
        (
            ".part files left after the stop",
            f"{len(report.part_leftovers)} (+{len(report.moved_parts)} in folders moved away, expected)",
            verdict(not report.part_leftovers),
        ),
        (
            "unhandled exceptions",
            f"{len(report.unhandled)} (+{report.injected_exceptions} injected on purpose)",
            verdict(not report.unhandled),
        ),
        ("streams not PLAYING at the end", str(len(report.not_playing)), verdict(not report.not_playing)),
        ("faults not recovered", str(sum(k.not_recovered for k in report.kinds.values())),
         verdict(all(k.not_recovered == 0 for k in report.kinds.values()))),
        ("credentials found in logs/events/API/metrics", str(len(report.credential_leaks)),
         verdict(not report.credential_leaks)),
        (
            "RSS start -> end",
            f"{report.before.rss_kib / 1024:.1f} -> {report.after.rss_kib / 1024:.1f} MiB "
            f"({_mib(report.after.rss_kib - report.before.rss_kib)})",
            "info",
        ),
        ("open fds start -> end", f"{report.before.fds} -> {report.after.fds}", "info"),
        (
            "threads start -> end (Python / native)",
            f"{report.before.python_threads} -> {report.after.python_threads} / "
            f"{report.before.native_threads} -> {report.after.native_threads}",
            "info",
        ),
        ("ERROR log lines (all, handled included)", str(report.error_lines), "info"),
    ]  # fmt: skip
    if churn is not None:
        rows += [
            (
                f"churn: {churn.cycles} add/remove cycles ({churn.seconds:.0f} s), RSS growth",
                _mib(churn.rss_growth_kib),
                verdict(churn.rss_growth_kib < 10 * 1024),
            ),
            ("churn: fd / Python thread growth", f"{churn.fd_growth:+d} / {churn.python_thread_growth:+d}",
             verdict(churn.fd_growth <= 0 and churn.python_thread_growth <= 0)),
            ("churn: native thread growth", f"{churn.native_thread_growth:+d}", "info"),
            ("churn: unhandled exceptions", str(len(churn.unhandled)), verdict(not churn.unhandled)),
            ("churn: largest frame gap of the other streams", f"{churn.max_gap_others * 1000:.0f} ms",
             verdict(churn.max_gap_others < 0.5 and churn.others_recoveries == 0)),
        ]  # fmt: skip
    return rows


def to_markdown(report: ChaosReport) -> str:
    o = report.options
    lines = [
        "# streamwarden chaos report",
        "",
        f"Run {report.started}: {o.streams} streams ({sum(s.startswith('cam') for s in report.streams)} "
        f"RTSP through fault proxies, the rest looping files), every stream recording (MKV, 10 s segments), "
        f"faults for {o.duration:.0f} s, seed {o.seed}, {len(report.faults)} faults; whole run "
        f"{report.seconds:.0f} s on {os.cpu_count()} cores, {report.gst_version}.",
        "",
        "## Per fault type",
        "",
        "Detection: fault injected -> the stream left PLAYING. Recovery: fault healed (instant faults: "
        "injected) -> PLAYING again. Seconds.",
        "",
        "| " + " | ".join(KIND_COLUMNS) + " |",
        "|" + "---|" * len(KIND_COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in kind_rows(report)]
    lines += ["", "## Checks", "", "| check | measured | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(report)]
    header = "| stream | state | frames ingested | frames recorded | holes | recoveries | attempts | errors |"
    lines += ["", "## Streams", "", header, "|---|---|---|---|---|---|---|---|"]
    for stream_id, data in report.streams.items():
        errors = ", ".join(f"{k}={v}" for k, v in sorted(data["errors"].items())) or "-"
        lines.append(
            f"| {stream_id} | {data['state']} | {data['frames']} | {data.get('recorded', 0)} | "
            f"{data.get('holes', 0)} | {data['recoveries']} | {data['attempts']} | {errors} |"
        )
    problems = [*report.unplayable, *report.part_leftovers, *report.unhandled, *report.credential_leaks]
    if report.churn is not None:
        problems += [f"churn: {text}" for text in report.churn.unhandled[:20]]
    notes = [f"- {f.kind.name} on {f.stream}: {f.note.strip()}" for f in report.faults if f.note.strip()]
    if problems or notes:
        lines += ["", "## Notes", ""]
        lines += [f"- problem: {p}" for p in problems]
        lines += notes
    lines += [
        "",
        "A fault window runs from the injection to the release of its stream (PLAYING again for 2 s), "
        "+-1.5 s when a file's timestamps are mapped to wall time. Frames ingested but not recorded are "
        "the frames before the first keyframe after each (re)connect (segments start on a keyframe) and "
        "what a hard failure cut: inside fault windows by construction. A bandwidth limit below the "
        "stream's bitrate makes the camera drop frames without any outage: they show as missing in "
        "recordings inside that fault's windows.",
        "",
    ]
    return "\n".join(lines)


def print_report(report: ChaosReport, console: Any) -> None:
    from rich.table import Table

    table = Table(title="faults")
    for column in KIND_COLUMNS:
        table.add_column(column)
    for row in kind_rows(report):
        table.add_row(*row)
    console.print(table)
    checks = Table(title="checks")
    for column in ("check", "measured", "verdict"):
        checks.add_column(column)
    for a, b, c in summary_rows(report):
        checks.add_row(a, b, c if c != "FAIL" else "[red]FAIL[/red]")
    console.print(checks)


def main_chaos(
    *,
    streams: int,
    duration: float,
    seed: int,
    report_path: Path | None,
    churn_cycles: int,
    workdir: Path | None,
) -> int:
    """The CLI entry: 0 when every check passed, 1 otherwise."""
    from rich.console import Console

    from streamwarden.logs import setup_logging

    console = Console()
    base = workdir or Path(tempfile.mkdtemp(prefix="streamwarden-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    setup_logging("INFO", path=base / "chaos.log", json_lines=True)
    options = ChaosOptions(streams=streams, duration=duration, seed=seed, workdir=base)
    report = run_chaos(options, progress=lambda text: console.print(text, highlight=False))
    if churn_cycles > 0:
        console.print(f"churn: {churn_cycles} add/remove cycles while 3 streams play")
        report.churn = run_churn(
            churn_cycles,
            base,
            seed=seed,
            progress=lambda i: console.print(f"  churn cycle {i}", highlight=False),
        )
    print_report(report, console)
    text = to_markdown(report)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(text)
        console.print(f"report written to {report_path}; log and recordings in {base}")
    if workdir is None:
        shutil.rmtree(base / "rec", ignore_errors=True)
        shutil.rmtree(base / "rec-moved", ignore_errors=True)
        shutil.rmtree(base / "churn-rec", ignore_errors=True)
    return 0 if report.ok() else 1
