"""``make bench``: streamwarden side by side with bare gst-launch-1.0 and one ffmpeg per camera.

For N in 1, 8, 16, 32, 64 RTSP cameras (1080p30 H.264 ~4 Mbit/s served by ``loadgen.py``, a
separate process that loops a pre-encoded clip from memory), interleaved in one run, R times:

- streamwarden: one engine process with N streams (``sut_streamwarden.py``), workload (a)
  ingest + record and, when this checkout has re-serving, (b) ingest + record + RTSP re-serve
  with one client per stream (``rtspclient.py``, a separate process);
- gst-launch-1.0: ONE process holding the N chains ``rtspsrc ! rtph264depay ! h264parse !
  splitmuxsink`` (the floor of this stack);
- ffmpeg: one ``ffmpeg -c copy -f segment`` process per camera.

Per run: CPU seconds per stream-second over the window (utime+stime of the process tree from
/proc), peak RSS per stream (VmHWM summed over the tree), frames delivered (distinct
timestamps in the recorded files, by ffprobe) vs frames the load generator sent. It stops
after the N at which the machine saturates. Then recovery latency (streamwarden only, the
load generator SIGKILLed and restarted K times per N), the control API's latency at the
largest N, and a profile of the engine (per-thread CPU, py-spy, perf) at N=16.

Writes ``bench/results/<UTC>.md`` + ``latest.md`` and a PNG plot; prints the table.

    .venv/bin/python bench/run.py            # default: ~20 min
    .venv/bin/python bench/run.py --quick    # ~3 min smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (
    ChildError,
    JsonChild,
    MachineCpu,
    free_port,
    percentile,
    sample_tree,
    stop_processes,
    thread_groups_delta,
    tree_cpu_delta,
    tree_peak_rss_mib,
    tree_threads,
)
from loadgen import CLIP_FPS, ensure_clip, loadgen_argv, mount_path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PY = sys.executable
SUT = str(BENCH_DIR / "sut_streamwarden.py")
CLIENT = str(BENCH_DIR / "rtspclient.py")
CORES = os.cpu_count() or 1

SW, GST, FFMPEG = "streamwarden", "gst-launch", "ffmpeg"
GST_SHAPED = "gst-launch, engine-shaped"
PY_SHAPED = "engine-shaped, Python process, no probe"
PY_PROBES = "engine-shaped + 3 Python probes"
PROBES = str(BENCH_DIR / "sut_probes.py")
RECOVERY_CONFIG = {
    "backoff": {
        "initial_seconds": 0.5,
        "multiplier": 2.0,
        "max_seconds": 4.0,
        "jitter": "full",
        "reset_after_seconds": 1.0,
    },
    "breaker": {"failure_threshold": 10},
    "stall_timeout_seconds": 5.0,
}
DRAIN_SECONDS = 0.7  # feed held before a tool stops: the jitterbuffer (200 ms) and sockets empty
_RETRY_RE = re.compile(r"retry in ([0-9.]+) s")
_STREAM_RE = re.compile(r"(s\d{3})")


class BenchInterruptedError(Exception):
    pass


# -- running ---------------------------------------------------------------------------------------
@dataclass
class Run:
    tool: str
    workload: str  # "a": ingest + record; "b": + RTSP re-serve, one client per stream
    n: int
    repeat: int
    window: float = 0.0
    cpu: float = math.nan
    rss_mib: float = math.nan
    threads: int = 0
    sent: int = 0
    delivered: int = 0
    worst_stream: float = math.nan  # lowest delivered/sent of one stream
    lost_startup: int = 0  # missing frames explained by gaps in a stream's first seconds
    lost_steady: int = 0  # the other missing frames: lost while the stream was running
    source_fps: float = math.nan  # frames/s per stream the load generator sent in the window
    machine_busy: float = math.nan  # whole machine, other users included
    bench_busy: float = math.nan  # tool + load generator (+ re-serve clients), share of all cores
    loadgen_cores: float = math.nan
    client_fps_min: float | None = None
    client_fps_median: float | None = None
    ingest_frames: int | None = None
    start_seconds: float = math.nan
    thread_cpu: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0  # seconds the whole run took (start to frames counted)
    error: str | None = None
    note: str = ""

    @property
    def cpu_per_stream(self) -> float:
        return self.cpu / (self.n * self.window) if self.window > 0 else math.nan

    @property
    def rss_per_stream(self) -> float:
        return self.rss_mib / self.n

    @property
    def delivery(self) -> float:
        return self.delivered / self.sent if self.sent else math.nan

    @property
    def steady_delivery(self) -> float:
        """Delivered / sent, not counting what was lost while streams were starting."""
        return 1 - self.lost_steady / self.sent if self.sent else math.nan


@dataclass
class Settings:
    ns: list[int]
    repeats: int
    window: float
    warmup: float
    faults: int
    down: float
    recovery_ns: list[int] | None
    profile_n: int
    profile_seconds: float
    max_busy: float
    min_delivery: float
    tools: list[str]
    quick: bool
    out: Path
    keep: bool
    skip_recovery: bool
    skip_profile: bool


class Bench:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamwarden-bench"
        self.clip: Path = Path()
        self.loadgen: JsonChild | None = None
        self.loadgen_port = 0
        self.children: list[JsonChild] = []
        self.popens: list[subprocess.Popen[bytes]] = []
        self.serve_available = False
        self.api_available = False
        self.runs: list[Run] = []
        self.saturated: dict[str, str] = {}  # workload -> where and why it saturated the machine
        self.completed_ns: list[int] = []
        self.api_latency: dict[int, dict[str, list[float]]] = {}
        self.api_errors: dict[int, str] = {}
        self.recovery: dict[int, dict[str, Any]] = {}
        self.profile: dict[str, Any] = {}
        self.policy = ""  # markdown table of bench/policy_bench.py
        self.seq = 0

    # -- children ---------------------------------------------------------------------------------
    def child(self, argv: Sequence[str], name: str, stdin: bool = False) -> JsonChild:
        self.seq += 1
        child = JsonChild(argv, log_path=self.logs / f"{self.seq:03d}-{name}.log", stdin=stdin, name=name)
        self.children.append(child)
        return child

    def popen(self, argv: Sequence[str], name: str) -> subprocess.Popen[bytes]:
        self.seq += 1
        log = (self.logs / f"{self.seq:03d}-{name}.log").open("ab")
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        self.popens.append(proc)
        return proc

    def cleanup(self) -> None:
        """Every child ends here, whatever happened (SIGTERM, wait, SIGKILL)."""
        for child in self.children:
            with contextlib.suppress(Exception):
                child.close(signal.SIGTERM, timeout=5)
        self.children.clear()
        live = [p for p in self.popens if p.poll() is None]
        if live:
            stop_processes(live, signal.SIGKILL, 5)
        self.popens.clear()

    def start_loadgen(self, mounts: int, port: int) -> tuple[JsonChild, float]:
        lg = self.child(loadgen_argv(port, mounts, self.clip), "loadgen", stdin=True)
        ready = lg.read_json(60, "READY")
        return lg, float(ready["t"])

    # -- tools ---------------------------------------------------------------------------------
    def url(self, index: int, port: int | None = None) -> str:
        return f"rtsp://127.0.0.1:{port or self.loadgen_port}{mount_path(index)}"

    def gst_argv(self, n: int, record: Path, shaped: bool) -> list[str]:
        argv = ["gst-launch-1.0", "-q", "-e"]
        for i in range(n):
            location = f"location={record}/s{i:03d}-%05d.mkv"
            src = ["rtspsrc", f"location={self.url(i)}", "protocols=tcp", "latency=200", "!", "rtph264depay"]
            parse = ["!", "h264parse", "config-interval=-1", "!"]
            split = ["splitmuxsink", "muxer-factory=matroskamux", "max-size-time=10000000000", location]
            if not shaped:
                argv += src + parse + split
                continue
            # What the engine builds per stream, minus Python: ingest queue, tee, a discard branch
            # (queue ! fakesink) and the recorder branch (leaky queue ! splitmuxsink, unbuffered sink).
            tee = f"t{i}"
            argv += src + parse + ["queue", "!", "tee", f"name={tee}", "allow-not-linked=true"]
            argv += [f"{tee}.", "!", "queue", "!", "fakesink", "sync=false", "async=false"]
            argv += [f"{tee}.", "!", "queue", "max-size-time=5000000000", "max-size-buffers=0"]
            argv += ["max-size-bytes=0", "leaky=downstream", "!"]
            argv += [*split, "sink=filesink buffer-mode=2 async=false"]
        return argv

    def ffmpeg_argv(self, i: int, record: Path) -> list[str]:
        return [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
            "-rtsp_transport", "tcp", "-timeout", "2000000", "-i", self.url(i),
            "-map", "0:v", "-c", "copy", "-f", "segment", "-segment_time", "10",
            "-segment_format", "matroska", "-reset_timestamps", "1", f"{record}/s{i:03d}-%03d.mkv",
        ]  # fmt: skip

    # -- one measured run --------------------------------------------------------------------------
    def run_one(
        self,
        tool: str,
        workload: str,
        n: int,
        repeat: int,
        *,
        api: bool = False,
        during: Callable[[int], dict[str, Any]] | None = None,
    ) -> Run:
        run = Run(tool=tool, workload=workload, n=n, repeat=repeat)
        record = self.workdir / f"rec-{self.seq + 1:03d}"
        record.mkdir(parents=True)
        lg = self.loadgen
        assert lg is not None
        before = lg.command("stats")["sent"]
        mounts = [mount_path(i) for i in range(n)]
        sut: JsonChild | None = None
        procs: list[subprocess.Popen[bytes]] = []
        clients: JsonChild | None = None
        done: dict[str, Any] = {}
        ready: dict[str, Any] = {}
        started = time.monotonic()
        try:
            if tool == SW:
                argv = [PY, SUT, "--base-url", f"rtsp://127.0.0.1:{self.loadgen_port}", "--streams", str(n)]
                argv += ["--record-dir", str(record)]
                if workload == "b":
                    argv.append("--serve")
                sut = self.child(argv, f"sut-{n}")
                ready = sut.read_json(90 + n, "READY")
                if ready["playing"] != n:
                    run.note = f"{ready['playing']}/{n} playing at ready"
                pids = [sut.pid]
            elif tool in (PY_SHAPED, PY_PROBES):
                urls = [self.url(i) for i in range(n)]
                probes = "3" if tool == PY_PROBES else "0"
                argv = [PY, PROBES, "--probes", probes, "--record-dir", str(record), *urls]
                sut = self.child(argv, f"probes-{n}")
                sut.read_json(60, "READY")
                pids = [sut.pid]
            elif tool in (GST, GST_SHAPED):
                procs = [self.popen(self.gst_argv(n, record, tool == GST_SHAPED), f"gst-{n}")]
                pids = [procs[0].pid]
            elif tool == FFMPEG:
                procs = [self.popen(self.ffmpeg_argv(i, record), f"ffmpeg-{n}-{i}") for i in range(n)]
                pids = [p.pid for p in procs]
            else:
                raise ValueError(tool)
            self._wait_flowing(mounts, before, timeout=30 + n)
            run.start_seconds = time.monotonic() - started
            if workload == "b":
                assert sut is not None and ready.get("rtsp_port")
                port = int(ready["rtsp_port"])
                urls = [f"rtsp://127.0.0.1:{port}/s{i:03d}" for i in range(n)]
                clients = self.child([PY, CLIENT, *urls], f"clients-{n}", stdin=True)
                creport = clients.read_json(60, "READY")
                if creport["playing"] != n:
                    run.note += f" {creport['playing']}/{n} re-serve clients playing"
            time.sleep(self.s.warmup)

            # -- the window --
            lg0 = lg.command("stats")
            c0 = clients.command("stats") if clients is not None else None
            m0 = MachineCpu.read()
            helpers = [lg.pid] + ([clients.pid] if clients is not None else [])
            sut0, help0 = sample_tree(pids), sample_tree(helpers)
            lgs0 = sample_tree([lg.pid])
            t0 = time.monotonic()
            extra = during(pids[0]) if during is not None else {}
            while time.monotonic() - t0 < self.s.window:
                time.sleep(min(1.0, self.s.window - (time.monotonic() - t0)))
                if (sut is not None and not sut.alive()) or any(p.poll() is not None for p in procs):
                    raise ChildError(f"{tool} exited during the window")
            sut1, help1 = sample_tree(pids), sample_tree(helpers)
            lgs1 = sample_tree([lg.pid])
            t1 = time.monotonic()
            m1 = MachineCpu.read()
            lg1 = lg.command("stats")
            c1 = clients.command("stats") if clients is not None else None
            run.window = t1 - t0
            run.cpu = tree_cpu_delta(sut0, sut1)
            run.rss_mib = tree_peak_rss_mib(pids)
            run.threads = tree_threads(pids)
            run.machine_busy = m1.busy_fraction_since(m0)
            run.loadgen_cores = tree_cpu_delta(lgs0, lgs1) / run.window
            run.bench_busy = (run.cpu + tree_cpu_delta(help0, help1)) / (run.window * CORES)
            run.source_fps = sum(lg1["sent"][m] - lg0["sent"][m] for m in mounts) / (
                n * (lg1["t"] - lg0["t"])
            )
            run.thread_cpu = thread_groups_delta(sut0, sut1)
            if extra:
                self.profile.update(extra)
            if c0 is not None and c1 is not None:
                fps = [
                    (c1["clients"][u]["frames"] - c0["clients"][u]["frames"]) / (c1["t"] - c0["t"])
                    for u in c1["clients"]
                ]
                run.client_fps_min = min(fps)
                run.client_fps_median = statistics.median(fps)
            if api and sut is not None and ready.get("api_port"):
                try:
                    self.api_latency[n] = _api_latency(int(ready["api_port"]), n)
                except Exception as exc:  # the API's failure is a finding, not the end of the bench
                    self.api_errors[n] = f"{type(exc).__name__}: {exc}"[:300]

            # -- drain and stop: no frame is in flight when the recorders close --
            lg.command("hold")
            time.sleep(DRAIN_SECONDS)
            if clients is not None:
                clients.close(signal.SIGTERM, timeout=10)
            if sut is not None:
                sut.send_signal(signal.SIGTERM)
                done = sut.read_json(60, "DONE")
                if tool in (PY_SHAPED, PY_PROBES):
                    done = {}
            if procs:
                stop_processes(procs, signal.SIGINT, 20)
        except (ChildError, ValueError, KeyError, AssertionError, OSError) as exc:
            run.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            print(f"    ! {tool} n={n}: {run.error}", flush=True)
        finally:
            if clients is not None:
                clients.close(signal.SIGTERM, timeout=5)
            if sut is not None:
                sut.close(signal.SIGTERM, timeout=30)
            if procs:
                stop_processes(procs, signal.SIGKILL, 5)
        after = lg.command("stats")["sent"]
        lg.command("resume")
        sent = {m: after[m] - before[m] for m in mounts}
        run.sent = sum(sent.values())
        per_stream = count_frames(record)
        run.delivered = sum(r.frames for r in per_stream.values())
        ratios = []
        for i, m in enumerate(mounts):
            got = per_stream.get(f"s{i:03d}", Recorded())
            missing = max(0, sent[m] - got.frames)
            startup = min(missing, got.startup_gap_frames)
            run.lost_startup += startup
            run.lost_steady += missing - startup
            if sent[m]:
                ratios.append(got.frames / sent[m])
        run.worst_stream = min(ratios) if ratios else math.nan
        if self.s.keep:
            detail = {
                f"s{i:03d}": [sent[m], per_stream.get(f"s{i:03d}", Recorded()).__dict__]
                for i, m in enumerate(mounts)
            }
            (record / "sent-delivered.json").write_text(json.dumps(detail))
        health = done.get("health") or {}
        if health:
            run.ingest_frames = sum(int(h.get("frames_total", 0)) for h in health.values())
        if not self.s.keep:
            shutil.rmtree(record, ignore_errors=True)
        run.wall = time.monotonic() - started
        return run

    def _wait_flowing(self, mounts: list[str], before: dict[str, int], timeout: float) -> None:
        """Until the load generator pushed frames to every mount of this run."""
        lg = self.loadgen
        assert lg is not None
        deadline = time.monotonic() + timeout
        while True:
            sent = lg.command("stats")["sent"]
            missing = [m for m in mounts if sent[m] - before[m] < CLIP_FPS // 2]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ChildError(f"{len(missing)} of {len(mounts)} mounts never played (e.g. {missing[0]})")
            time.sleep(0.25)

    # -- phases ------------------------------------------------------------------------------------
    def throughput(self) -> None:
        entries = [(t, "a") for t in self.s.tools]
        if SW in self.s.tools and self.serve_available:
            entries.append((SW, "b"))
        for n in self.s.ns:
            n_entries = [e for e in entries if e[1] not in self.saturated]
            if not n_entries:
                break
            if n == self.s.profile_n and "a" not in self.saturated and {GST, SW} <= set(self.s.tools):
                n_entries += [(GST_SHAPED, "a"), (PY_SHAPED, "a"), (PY_PROBES, "a")]
            print(f"== N={n}", flush=True)
            for r in range(self.s.repeats):
                shift = r % len(n_entries)
                for tool, workload in n_entries[shift:] + n_entries[:shift]:
                    api = tool == SW and workload == "a" and r == 0 and self.api_available
                    run = self.run_one(tool, workload, n, r, api=api)
                    self.runs.append(run)
                    print("   " + _run_line(run), flush=True)
            self.completed_ns.append(n)
            for workload in sorted({w for _, w in n_entries}):
                reason = self._saturated(n, workload)
                if reason:
                    self.saturated[workload] = f"N={n}: {reason}"
                    print(f"   ! workload ({workload}) saturated the machine at N={n}: {reason}", flush=True)
                    print(f"     ({workload}) is not run at larger N", flush=True)

    def _saturated(self, n: int, workload: str) -> str | None:
        """Why the machine (not one tool) could not keep up with this workload at this N; None if it could.

        Per run: the tool plus the load generator (and re-serve clients) above ``max_busy`` of all
        cores (other users of the machine are not counted); the load generator below 95 % of
        its frame rate; frames lost while running (start-up losses excluded) by a floor tool
        (gst-launch, ffmpeg), or by streamwarden while the bench itself was busy. A tool is
        saturated when most of its runs at this N are (one odd run is reported, not acted on);
        a streamwarden loss on an idle machine is its own defect and does not stop the run.
        """
        flagged: dict[str, list[str]] = defaultdict(list)
        totals: dict[str, int] = defaultdict(int)
        for run in (r for r in self.runs if r.n == n and r.workload == workload):
            totals[run.tool] += 1
            label = f"{run.tool}{' (b)' if run.workload == 'b' else ''} r{run.repeat}"
            reason = None
            if run.error:
                reason = f"{label} failed" if run.tool != SW else None
            elif run.bench_busy > self.s.max_busy:
                reason = f"{label}: tool + load generator used {run.bench_busy:.0%} of the cores"
            elif run.source_fps < 0.95 * CLIP_FPS:
                reason = f"{label}: load generator reached {run.source_fps:.1f} fps"
            elif run.steady_delivery < self.s.min_delivery and (run.tool != SW or run.bench_busy > 0.75):
                reason = f"{label} lost {1 - run.steady_delivery:.1%} of the frames sent while running"
            elif (
                run.client_fps_min is not None
                and run.client_fps_min < 0.95 * CLIP_FPS
                and run.bench_busy > 0.75
            ):
                reason = f"{label}: a re-serve client got {run.client_fps_min:.1f} fps"
            if reason:
                flagged[run.tool].append(reason)
        reasons = [r for tool, rs in flagged.items() if 2 * len(rs) > totals[tool] for r in rs]
        return "; ".join(reasons[:3]) if reasons else None

    def recovery_phase(self) -> None:
        ns = self.s.recovery_ns or self.completed_ns
        ns = [n for n in ns if not self.completed_ns or n <= max(self.completed_ns)]
        for n in ns:
            print(
                f"== recovery N={n}: {self.s.faults} x SIGKILL of the camera server, {self.s.down:g} s down"
            )
            try:
                self.recovery[n] = self._recovery(n)
                print("   " + _recovery_line(self.recovery[n]), flush=True)
            except (ChildError, OSError, ValueError, KeyError) as exc:
                self.recovery[n] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"[:300]}
                print(f"   ! {self.recovery[n]['error']}", flush=True)

    def _recovery(self, n: int) -> dict[str, Any]:
        port = free_port()
        lg, _ = self.start_loadgen(n, port)
        events_path = self.workdir / f"events-{n}.jsonl"
        record = self.workdir / f"rec-recovery-{n}"
        argv = [PY, SUT, "--base-url", f"rtsp://127.0.0.1:{port}", "--streams", str(n), "--no-api"]
        argv += ["--record-dir", str(record), "--events-file", str(events_path)]
        argv += ["--recovery", json.dumps(RECOVERY_CONFIG)]
        sut = self.child(argv, f"sut-recovery-{n}")
        faults: list[tuple[float, float]] = []
        try:
            ready = sut.read_json(90 + n, "READY")
            if ready["playing"] != n:
                raise ChildError(f"only {ready['playing']}/{n} streams played")
            time.sleep(2.0)
            for _ in range(self.s.faults):
                t_fault = time.monotonic()
                lg.kill()
                time.sleep(self.s.down)
                lg.close()
                lg, t_up = self.start_loadgen(n, port)
                faults.append((t_fault, t_up))
                deadline = time.monotonic() + 60 + n
                while not _all_playing_since(events_path, n, t_up):
                    if time.monotonic() > deadline:
                        raise ChildError(f"streams did not all recover within {60 + n} s")
                    if not sut.alive():
                        raise ChildError("the engine exited")
                    time.sleep(0.2)
                time.sleep(1.5)
        finally:
            sut.close(signal.SIGTERM, timeout=30)
            lg.close(signal.SIGTERM, timeout=5)
            shutil.rmtree(record, ignore_errors=True)
        return _recovery_samples(events_path, faults)

    def profile_phase(self) -> None:
        n = self.s.profile_n
        if n not in self.completed_ns:
            n = max((x for x in self.completed_ns if x <= n), default=0)
        if n == 0:
            return
        print(f"== profile: streamwarden at N={n} (py-spy, perf, per-thread CPU)", flush=True)
        seconds = self.s.profile_seconds

        def during(pid: int) -> dict[str, Any]:
            return {"pyspy": _pyspy(pid, seconds, self.workdir), "perf": _perf(pid, seconds, self.workdir)}

        saved = self.s.window
        self.s.window = max(self.s.window, 2 * seconds + 2)
        try:
            run = self.run_one(SW, "a", n, 0, during=during)
        finally:
            self.s.window = saved
        self.profile["n"] = n
        self.profile["run"] = run


# -- measuring helpers -------------------------------------------------------------------------------
@dataclass
class Recorded:
    frames: int = 0
    # Frames missing in gaps during the first STARTUP_SECONDS of the stream's first file: start-up
    # (the primed keyframe's wait for PLAY included), told apart from losses in the steady state.
    startup_gap_frames: int = 0


STARTUP_SECONDS = 3.0


def count_frames(record: Path) -> dict[str, Recorded]:
    """Video frames per stream over every segment it wrote (ffprobe reads packets, no decoding)."""
    files = sorted(p for p in record.rglob("*") if p.suffix in (".mkv", ".mp4") and p.is_file())

    def frames(path: Path) -> tuple[str, int, list[float]]:
        match = _STREAM_RE.search(path.name) or _STREAM_RE.search(str(path.parent))
        try:
            out = subprocess.run(
                ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
                 "-of", "csv=p=0", str(path)],
                capture_output=True, timeout=60, check=False, text=True,
            ).stdout  # fmt: skip
        except subprocess.TimeoutExpired:
            out = ""
        # One packet is one frame, except that ffmpeg's RTP depacketiser writes a keyframe as two
        # keyframe packets 1 ms apart: those count once.
        count = 0
        stamps: list[float] = []
        prev_key_at: float | None = None
        for raw in out.splitlines():
            stamp_text, _, flags = raw.strip().partition(",")
            if not stamp_text:
                continue
            try:
                stamp: float | None = float(stamp_text)
            except ValueError:
                stamp = None
            key = "K" in flags
            if key and stamp is not None and prev_key_at is not None and 0 <= stamp - prev_key_at < 0.005:
                prev_key_at = None
                continue
            count += 1
            prev_key_at = stamp if key else None
            if stamp is not None:
                stamps.append(stamp)
        return (match.group(1) if match else "?"), count, sorted(stamps)

    totals: dict[str, Recorded] = defaultdict(Recorded)
    period = 1.0 / CLIP_FPS
    with ThreadPoolExecutor(max_workers=2) as pool:
        for stream, count, stamps in pool.map(frames, files):
            first_file = stream not in totals
            entry = totals[stream]
            entry.frames += count
            if first_file and stamps:
                start = stamps[0]
                for a, b in itertools.pairwise(stamps):
                    if a - start > STARTUP_SECONDS:
                        break
                    if b - a > 1.5 * period:
                        entry.startup_gap_frames += round((b - a) / period) - 1
    return dict(totals)


def _api_latency(port: int, n: int) -> dict[str, list[float]]:
    import httpx

    ids = [f"s{i:03d}" for i in range(n)]
    out: dict[str, list[float]] = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        client.get("/streams")  # connection set up, not timed
        kinds: list[tuple[str, Callable[[int], str], int]] = [
            ("GET /streams/{id}", lambda k: f"/streams/{ids[k % n]}", 300),
            (f"GET /streams ({n} streams)", lambda _k: "/streams", 100),
        ]
        for name, path_of, count in kinds:
            samples = []
            for k in range(count):
                t = time.perf_counter()
                response = client.get(path_of(k))
                samples.append((time.perf_counter() - t) * 1000)
                if response.status_code != 200:
                    raise ChildError(f"API {path_of(k)}: {response.status_code}")
            out[name] = samples
    return out


def _pyspy(pid: int, seconds: float, workdir: Path) -> dict[str, Any]:
    exe = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(exe).exists():
        return {"error": "py-spy not installed (pip install '.[bench]')"}
    out = workdir / "pyspy.txt"
    rate = 100
    argv = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
    argv += ["--format", "raw", "--output", str(out), "--nonblocking"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0 or not out.exists():
        return {"error": (proc.stderr or proc.stdout).strip()[-300:]}
    own: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {
        "seconds": seconds,
        "rate": rate,
        "samples": total,
        "own": sorted(own.items(), key=lambda kv: -kv[1])[:12],
        "inclusive": sorted(inclusive.items(), key=lambda kv: -kv[1])[:15],
    }


def _short_frame(frame: str) -> str:
    # "func (/path/to/module.py:123)" -> "func (module.py)"
    match = re.match(r"(.*) \((.*?):?(\d+)?\)$", frame.strip())
    if not match:
        return frame.strip()
    func, path = match.group(1), match.group(2)
    return f"{func} ({Path(path).name})"


def _perf(pid: int, seconds: float, workdir: Path) -> dict[str, Any]:
    if shutil.which("perf") is None:
        return {"error": "perf not installed (apt-get install linux-perf)"}
    data = workdir / "perf.data"
    rec = subprocess.run(
        ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(data), "--", "sleep", str(seconds)],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    if rec.returncode != 0 or not data.exists():
        return {"error": (rec.stderr or rec.stdout).strip()[-300:]}
    out: dict[str, Any] = {"seconds": seconds}
    for key, sort in (("dso", "dso"), ("sym", "dso,sym"), ("comm", "comm")):
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none", "-q",
             "--percent-limit", "0.7", "--sort", sort],
            capture_output=True, text=True, timeout=120, check=False,
        ).stdout  # fmt: skip
        rows = []
        for raw in report.splitlines():
            line = raw.strip()
            if not line or not line[0].isdigit():
                continue
            pct, _, rest = line.partition("%")
            rows.append((float(pct), " ".join(rest.split())))
        out[key] = rows[:18]
    return out


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events


def _all_playing_since(path: Path, n: int, since: float) -> bool:
    last: dict[str, dict[str, Any]] = {}
    for event in _read_events(path):
        last[event["stream"]] = event
    return len(last) == n and all(
        e["to_state"] == "PLAYING" and e["monotonic"] > since for e in last.values()
    )


def _recovery_samples(path: Path, faults: list[tuple[float, float]]) -> dict[str, Any]:
    """Per fault and stream: detection, reachable-to-first-frame, and the backoff that was due.

    ``due``: the delay X of the last "retry in X s" before the attempt that recovered; ``wait``:
    what was left of it when the source came back (max(0, scheduled retry - source back)), plus
    any wait for the global reconnect budget; ``over``: first frame - (source back + wait), the
    time the engine itself needed once it was allowed to try.
    """
    by_stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in _read_events(path):
        by_stream[event["stream"]].append(event)
    for events in by_stream.values():
        events.sort(key=lambda e: e["monotonic"])
    out: dict[str, Any] = {k: [] for k in ("detect", "reach", "due", "wait", "over")}
    budget = missing = 0
    for t_fault, t_up in faults:
        for events in by_stream.values():
            lost = next(
                (e for e in events if e["monotonic"] >= t_fault and e["from_state"] == "PLAYING"), None
            )
            back = next((e for e in events if e["monotonic"] > t_up and e["to_state"] == "PLAYING"), None)
            if lost is None or back is None:
                missing += 1
                continue
            span = [e for e in events if lost["monotonic"] <= e["monotonic"] <= back["monotonic"]]
            attempt = next((e for e in reversed(span) if e["to_state"] == "CONNECTING"), None)
            t_attempt = attempt["monotonic"] if attempt is not None else t_up
            retries = [
                (e["monotonic"], float(m.group(1)))
                for e in span
                if e["monotonic"] <= t_attempt and (m := _RETRY_RE.search(e.get("reason", "")))
            ]
            if any("reconnect budget" in e.get("reason", "") for e in span):
                budget += 1
            due = retries[-1][1] if retries else 0.0
            wait = max(0.0, t_attempt - t_up)
            out["detect"].append(lost["monotonic"] - t_fault)
            out["reach"].append(back["monotonic"] - t_up)
            out["due"].append(due)
            out["wait"].append(wait)
            out["over"].append(back["monotonic"] - t_up - wait)
    out.update(
        {"faults": len(faults), "samples": len(out["reach"]), "missing": missing, "budget_waits": budget}
    )
    return out


# -- report ------------------------------------------------------------------------------------------
def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _spread(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return _fmt(med, digits)
    return f"{_fmt(med, digits)} [{_fmt(min(values), digits)}-{_fmt(max(values), digits)}]"


def _ratio_spread(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def _run_line(run: Run) -> str:
    label = f"{run.tool}{' +serve' if run.workload == 'b' else ''}"
    if run.error:
        return f"{label:28s} r{run.repeat} FAILED {run.error}"
    client = f" client {run.client_fps_min:.1f} fps" if run.client_fps_min is not None else ""
    return (
        f"{label:28s} r{run.repeat} cpu/stream-s {run.cpu_per_stream:.4f} rss/stream "
        f"{run.rss_per_stream:6.1f} MiB "
        f"frames {run.delivered}/{run.sent} ({run.delivery:.2%}, start-up -{run.lost_startup} "
        f"later -{run.lost_steady}) bench {run.bench_busy:.0%} "
        f"machine {run.machine_busy:.0%} "
        f"src {run.source_fps:.1f} fps{client} [{run.wall:.0f} s] {run.note}"
    )


def _recovery_line(rec: dict[str, Any]) -> str:
    if rec.get("error"):
        return f"FAILED {rec['error']}"
    if not rec["reach"]:
        return "no samples"
    return (
        f"{rec['samples']} samples: detect p95 {percentile(rec['detect'], 95) * 1000:.0f} ms, "
        f"reachable->first frame p50 {percentile(rec['reach'], 50):.2f} s p95 "
        f"{percentile(rec['reach'], 95):.2f} s, "
        f"due backoff p50 {percentile(rec['due'], 50):.2f} s, first frame - (back + wait) p95 "
        f"{percentile(rec['over'], 95):.2f} s"
    )


def _groups(runs: list[Run]) -> dict[tuple[int, str, str], list[Run]]:
    out: dict[tuple[int, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        out[(run.n, run.workload, run.tool)].append(run)
    return out


def _paired(a: list[Run], b: list[Run], key: Callable[[Run], float]) -> list[float]:
    by_repeat = {r.repeat: r for r in b if not r.error}
    return [key(r) / key(by_repeat[r.repeat]) for r in a if not r.error and r.repeat in by_repeat]


def throughput_table(bench: Bench) -> str:
    order = [
        (SW, "a"),
        (GST, "a"),
        (FFMPEG, "a"),
        (GST_SHAPED, "a"),
        (PY_SHAPED, "a"),
        (PY_PROBES, "a"),
        (SW, "b"),
    ]
    groups = _groups(bench.runs)
    lines = [
        "| N | workload | tool | CPU-s per stream-s | % of the 2 cores | streamwarden / this, CPU (min / "
        "med / max) "
        "| peak RSS per stream (MiB) | threads | frames delivered / sent | worst stream "
        "| busy: tool+loadgen / machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    blank = " | | | | | | | |"
    for n in sorted({r.n for r in bench.runs}):
        for tool, workload in order:
            runs = groups.get((n, workload, tool), [])
            wl = "(a) ingest+record" if workload == "a" else "(b) +re-serve"
            if not runs:
                if tool == SW and workload == "b" and not bench.serve_available:
                    lines.append(f"| {n} | {wl} | {SW} | not available in this checkout{blank}")
                continue
            ok = [r for r in runs if not r.error]
            if not ok:
                lines.append(f"| {n} | {wl} | {tool} | FAILED: {runs[0].error}{blank}")
                continue
            cpu = [r.cpu_per_stream for r in ok]
            sent = sum(r.sent for r in ok)
            delivered = sum(r.delivered for r in ok)
            sw_runs = groups.get((n, "a", SW), [])
            if (tool, workload) == (SW, "a"):
                ratio = "-"
            elif workload == "b":
                ratio = "this / (a): " + _ratio_spread(_paired(ok, sw_runs, lambda r: r.cpu_per_stream))
            else:
                ratio = _ratio_spread(_paired(sw_runs, ok, lambda r: r.cpu_per_stream))
            frames = f"{delivered}/{sent} ({delivered / sent:.2%})" if sent else "-"
            startup, steady = sum(r.lost_startup for r in ok), sum(r.lost_steady for r in ok)
            if startup or steady:
                frames += f"; missing: {startup} at start-up, {steady} later"
            if workload == "b" and ok[0].client_fps_min is not None:
                frames += f"; re-served: slowest client {min(r.client_fps_min or 0 for r in ok):.1f} fps"
            failed = f" ({len(runs) - len(ok)} run(s) failed)" if len(ok) < len(runs) else ""
            busy = (
                f"{statistics.median(100 * r.bench_busy for r in ok):.0f} % / "
                f"{statistics.median(100 * r.machine_busy for r in ok):.0f} %"
            )
            lines.append(
                f"| {n} | {wl} | {tool}{failed} | {_spread(cpu)} | "
                f"{100 * statistics.median(cpu) * n / CORES:.1f} % "
                f"| {ratio} | {_spread([r.rss_per_stream for r in ok], 1)} "
                f"| {statistics.median(r.threads for r in ok):.0f} | {frames} "
                f"| {min(r.worst_stream for r in ok):.1%} | {busy} |"
            )
    return "\n".join(lines)


def _target_lines(bench: Bench) -> list[str]:
    groups = _groups(bench.runs)
    out = []
    n = 32 if any(r.n == 32 for r in bench.runs) else max(bench.completed_ns, default=0)
    sw = [r for r in groups.get((n, "a", SW), []) if not r.error]
    gst = [r for r in groups.get((n, "a", GST), []) if not r.error]
    ff = [r for r in groups.get((n, "a", FFMPEG), []) if not r.error]
    if sw and gst:
        ratio = statistics.median(_paired(sw, gst, lambda r: r.cpu_per_stream) or [math.nan])
        verdict = "met" if ratio <= 1.05 else "NOT met"
        out.append(
            f"- Supervision overhead at N={n}: streamwarden / bare gst-launch = {ratio:.2f}x (target ≤ "
            f"1.05x): {verdict}."
        )
    if sw and ff:
        ratio = statistics.median(_paired(sw, ff, lambda r: r.cpu_per_stream) or [math.nan])
        verdict = "met" if ratio <= 0.5 else "NOT met"
        out.append(
            f"- Versus one ffmpeg per camera at N={n}: {ratio:.2f}x ffmpeg's CPU (target ≤ 0.5x): {verdict}."
        )
    swb = [r for r in groups.get((32, "b", SW), []) if not r.error]
    if swb:
        lost = sum(r.sent - r.delivered for r in swb)
        cmin = min(r.client_fps_min or 0 for r in swb)
        verdict = "met" if lost <= 0 and cmin >= 0.95 * CLIP_FPS else "NOT met"
        out.append(
            f"- 32 streams recorded and re-served: {lost} frame(s) lost in the recordings over {len(swb)} "
            "run(s), "
            f"slowest re-serve client {cmin:.1f} fps: {verdict}."
        )
    elif bench.serve_available is False:
        out.append(
            "- 32 streams recorded and re-served: re-serve not available in this checkout: not measured."
        )
    rec_all = [v for v in bench.recovery.values() if not v.get("error") and v.get("reach")]
    if rec_all:
        over = [x for rec in rec_all for x in rec["over"]]
        p95 = percentile(over, 95)
        verdict = "met" if p95 <= 1.0 else "NOT met"
        out.append(
            f"- Recovery: first frame recorded - (source back + the backoff wait still due then): "
            f"p95 {p95:.2f} s over {len(over)} recoveries (target <= 1 s): {verdict}."
        )
    return out


def loss_lines(bench: Bench) -> list[str]:
    """Configurations whose recordings miss frames (split: start-up / while running), failed runs."""
    out = []
    for (n, workload, tool), runs in sorted(_groups(bench.runs).items()):
        ok = [r for r in runs if not r.error]
        failed = len(runs) - len(ok)
        if failed:
            out.append(f"- {tool} ({workload}) at N={n}: {failed} run(s) failed: {runs[0].error or ''}")
        sent = sum(r.sent for r in ok)
        startup, steady = sum(r.lost_startup for r in ok), sum(r.lost_steady for r in ok)
        if sent and (startup or steady) and (startup + steady) > sent * 0.0005:
            busy = max(r.machine_busy for r in ok)
            out.append(
                f"- {tool} ({workload}) at N={n}: {startup + steady} of {sent} frames missing "
                f"({(startup + steady) / sent:.2%}): {startup} in gaps in the streams' first "
                f"{STARTUP_SECONDS:g} s (start-up), {steady} later; machine at most {busy:.0%} busy."
            )
    if not out:
        return ["- none: every frame sent was found in the recordings (to 0.05 %)."]
    return [
        *out,
        "",
        "Start-up losses: frames that reached a tool before it was ready for them (for one gst-launch "
        "holding N chains, the frames each source receives between its PLAY and the whole pipeline "
        "reaching PLAYING). They are not counted against saturation; losses later are.",
    ]


def recovery_table(bench: Bench) -> str:
    lines = [
        "| N | recoveries | fault -> detected, ms (p50 / p95 / max) "
        "| source back -> first frame recorded, s (p50 / p95 / max) "
        "| backoff delay due, s (p50 / p95 / max) | of it still to wait when the source was back, s (p50 / "
        "p95) "
        "| first frame - (source back + that wait), s (p50 / p95 / max) | waited on the reconnect budget |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ppp(xs: list[float], scale: float = 1.0, digits: int = 2, pcts: Sequence[int] = (50, 95, 100)) -> str:
        return " / ".join(f"{percentile(xs, p) * scale:.{digits}f}" for p in pcts)

    for n, rec in sorted(bench.recovery.items()):
        if rec.get("error") or not rec.get("reach"):
            lines.append(f"| {n} | FAILED: {rec.get('error', 'no samples')} | | | | | | |")
            continue
        lines.append(
            f"| {n} | {rec['samples']} ({rec['faults']} faults x {n}; {rec['missing']} unmatched) "
            f"| {ppp(rec['detect'], 1000, 0)} | {ppp(rec['reach'])} | {ppp(rec['due'])} "
            f"| {ppp(rec['wait'], pcts=(50, 95))} | {ppp(rec['over'])} | {rec['budget_waits']} |"
        )
    return "\n".join(lines)


def api_table(bench: Bench) -> str:
    errors = [f"API latency at N={n} failed: {e}" for n, e in sorted(bench.api_errors.items())]
    if errors:
        return "\n\n".join(errors)
    if not bench.api_latency:
        return (
            "Not measured (the REST API is not available in this checkout)."
            if not bench.api_available
            else "Not measured."
        )
    n = max(bench.api_latency)
    lines = [
        "Measured through uvicorn + httpx on 127.0.0.1 (one keep-alive client, sequential) while the "
        "engine ran "
        f"N={n} streams (workload a), after the CPU window.",
        "",
        "| request | n | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, samples in bench.api_latency[n].items():
        lines.append(
            f"| {name} | {len(samples)} | {percentile(samples, 50):.1f} | {percentile(samples, 99):.1f} | "
            f"{max(samples):.1f} |"
        )
    return "\n".join(lines)


def profile_section(bench: Bench) -> str:
    prof = bench.profile
    run: Run | None = prof.get("run")
    if run is None:
        return "Not run."
    out = [
        f"streamwarden, workload (a), N={prof['n']}, one run with the profilers attached (its CPU is not in "
        "the tables above)."
    ]
    groups = _groups(bench.runs)
    n = prof["n"]

    def cpu_of(tool: str) -> float:
        runs = [r for r in groups.get((n, "a", tool), []) if not r.error]
        return statistics.median(r.cpu_per_stream for r in runs) if runs else math.nan

    sw, gst, shaped, probes = cpu_of(SW), cpu_of(GST), cpu_of(GST_SHAPED), cpu_of(PY_PROBES)
    pyshaped = cpu_of(PY_SHAPED)
    if not math.isnan(shaped) and not math.isnan(probes) and gst > 0:
        out += [
            "",
            f"**Attribution at N={n}** (medians of the interleaved runs above, CPU-s per stream-s; each "
            "row adds one thing to the row above it):",
            "",
            "| configuration | CPU-s per stream-s | x bare | step |",
            "|---|---|---|---|",
            f"| bare gst-launch (floor) | {gst:.4f} | 1.00 | |",
            "| + the engine's pipeline shape (ingest queue, tee, discard queue ! fakesink, leaky record "
            "queue, unbuffered filesink; one gst-launch, no Python) "
            f"| {shaped:.4f} | {shaped / gst:.2f} | {shaped - gst:+.4f} |",
            "| + built from one Python process, one pipeline per stream, no per-frame Python "
            f"| {pyshaped:.4f} | {pyshaped / gst:.2f} | {pyshaped - shaped:+.4f} |",
            "| + 3 per-frame Python pad probes (read the buffer, its flags, size, the time; nothing else) "
            f"| {probes:.4f} | {probes / gst:.2f} | {probes - pyshaped:+.4f} |",
            "| streamwarden (no per-frame Python: C counters polled 4 Hz, sampled media checks; "
            "plus supervisor, recorder service, API) "
            f"| {sw:.4f} | {sw / gst:.2f} | {sw - probes:+.4f} |",
        ]
    tops = []
    for tool in (GST, GST_SHAPED, PY_SHAPED, PY_PROBES, SW):
        runs = [r for r in groups.get((n, "a", tool), []) if not r.error and r.thread_cpu]
        if not runs:
            continue
        mid = sorted(runs, key=lambda r: r.cpu_per_stream)[len(runs) // 2]
        total = sum(mid.thread_cpu.values()) or 1.0
        top = sorted(mid.thread_cpu.items(), key=lambda kv: -kv[1])[:6]
        tops.append(f"| {tool} | " + ", ".join(f"`{k}` {100 * v / total:.0f} %" for k, v in top) + " |")
    if tops:
        out += ["", "Busiest threads per configuration (median run, share of its CPU):", ""]
        out += ["| configuration | threads |", "|---|---|", *tops]
    if run.thread_cpu:
        total = sum(run.thread_cpu.values()) or 1.0
        rows = sorted(run.thread_cpu.items(), key=lambda kv: -kv[1])[:14]
        out += [
            "",
            "**streamwarden CPU by thread in the profiled run (Linux thread name, digits folded):**",
            "",
            "| thread | share | CPU-s per stream-s |",
            "|---|---|---|",
        ]
        out += [
            f"| `{name}` | {100 * cpu / total:.1f} % | {cpu / (run.n * run.window):.5f} |"
            for name, cpu in rows
        ]
    spy = prof.get("pyspy") or {}
    if spy.get("error"):
        out += ["", f"py-spy: {spy['error']}"]
    elif spy:
        busy = spy["samples"] / (spy["seconds"] * spy["rate"])
        out += [
            "",
            f"**py-spy ({spy['seconds']:g} s at {spy['rate']} Hz, non-idle Python samples):** Python was "
            "running "
            f"{busy:.2f} thread-cores on average ({spy['samples']} samples). Top functions by own samples:",
            "",
            "| function | own samples | share of Python samples |",
            "|---|---|---|",
        ]
        out += [f"| `{f}` | {c} | {100 * c / max(1, spy['samples']):.1f} % |" for f, c in spy["own"]]
        out += [
            "",
            "Inclusive (function and what it calls):",
            "",
            "| function | samples | share |",
            "|---|---|---|",
        ]
        out += [f"| `{f}` | {c} | {100 * c / max(1, spy['samples']):.1f} % |" for f, c in spy["inclusive"]]
    perf = prof.get("perf") or {}
    if perf.get("error"):
        out += ["", f"perf: {perf['error']}"]
    elif perf:
        out += ["", f"**perf ({perf['seconds']:g} s, all threads of the engine process, self time):**", ""]
        out += ["| share | shared object |", "|---|---|"] + [
            f"| {p:.1f} % | `{s}` |" for p, s in perf.get("dso", [])
        ]
        out += ["", "| share | shared object / symbol |", "|---|---|"]
        out += [f"| {p:.1f} % | `{s}` |" for p, s in perf.get("sym", [])]
        out += ["", "| share | thread |", "|---|---|"]
        out += [f"| {p:.1f} % | `{s}` |" for p, s in perf.get("comm", [])]
    return "\n".join(out)


def policy_section(quick: bool) -> str:
    """The recovery-policy micro-benchmark: seconds of pure Python, so every run includes it."""
    print("== recovery-policy micro-benchmark (bench/policy_bench.py)", flush=True)
    try:
        import policy_bench

        rows = policy_bench.measure(quick=quick, progress=lambda line: print(line, flush=True))
        return policy_bench.markdown(rows)
    except Exception as exc:  # a broken micro-benchmark must not cost the whole run's report
        print(f"   ! policy bench failed: {exc!r}", flush=True)
        return f"Failed: `{exc!r}`"


def environment() -> str:
    def first_line(argv: list[str]) -> str:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=10, check=False
            ).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    rev = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(REPO), "status", "--porcelain"]) not in ("", "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{CORES} cores, {mem:.0f} GiB, Linux {platform.release()}; "
        f"{first_line(['gst-launch-1.0', '--version'])}; "
        f"{' '.join(first_line(['ffmpeg', '-version']).split()[:3])}; Python {platform.python_version()}; "
        f"streamwarden {rev}{' (+ uncommitted changes)' if dirty else ''}"
    )


def write_report(bench: Bench, started: datetime, elapsed: float) -> tuple[Path, str]:
    s = bench.s
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    s.out.mkdir(parents=True, exist_ok=True)
    png = s.out / f"{stamp}.png"
    plotted = plot(bench, png)
    sections = [
        f"# streamwarden bench, {started.strftime('%Y-%m-%d %H:%M UTC')}{' (--quick)' if s.quick else ''}",
        "",
        f"Machine: {environment()}.",
        "",
        "Load: one load-generator process (gst-rtsp-server, not counted in any figure) serving every camera: "
        "1920x1080 30 fps H.264 at ~4.1 Mbit/s, a keyframe every second, no B-frames, a pre-encoded 10 s "
        "clip "
        "looped from memory (`appsrc ! rtph264pay`, no encoding). RTSP over TCP on 127.0.0.1.",
        "",
        f"Runs: N = {', '.join(map(str, s.ns))}; {s.repeats} repeat(s) per N, the tools interleaved "
        "(order rotated each repeat). Each run: start the tool, wait until every camera streams, "
        f"{s.warmup:g} s warm-up, a {s.window:g} s measured window, then the feed is held "
        f"{DRAIN_SECONDS:g} s (nothing in flight) and the tool is stopped cleanly (EOS / SIGINT / "
        "SIGTERM). CPU = run time of every thread of the tool's process tree over the window "
        "(/proc schedstat, ns); RSS = VmHWM summed over the tree; frames delivered = distinct "
        "timestamps in the segments written (ffprobe, no decoding); frames sent = pushed by the load "
        "generator while the tool's session was PLAYING (plus the one keyframe that prepares the "
        f"media). Total time {elapsed / 60:.1f} min.",
        "",
        "- streamwarden: one engine process (`bench/sut_streamwarden.py`: Engine + REST API on uvicorn), "
        "RTSP over TCP, latency 200 ms, 10 s MKV segments; (b) adds the engine's RTSP server and one "
        "RTSP/TCP client per stream (`bench/rtspclient.py`, a separate process).",
        "- gst-launch: ONE `gst-launch-1.0 -e` holding all N chains `rtspsrc protocols=tcp latency=200 ! "
        "rtph264depay ! h264parse config-interval=-1 ! splitmuxsink muxer-factory=matroskamux "
        "max-size-time=10s`.",
        "- ffmpeg: one `ffmpeg -rtsp_transport tcp -i URL -map 0:v -c copy -f segment -segment_time 10 "
        "-segment_format matroska` per camera.",
        "",
        "## Throughput (medians over repeats, [min-max])",
        "",
        throughput_table(bench),
        "",
        "**Saturation:** "
        + (
            "; ".join(
                f"workload ({w}) at {why}, not run at larger N" for w, why in sorted(bench.saturated.items())
            )
            or "not reached at the largest N run"
        )
        + f". Criteria: the tool plus the load generator (and clients) above {s.max_busy:.0%} of the "
        "cores (other users of the machine not counted: see the machine column); the load generator "
        f"below 95 % of 30 fps; gst-launch or ffmpeg delivering < {s.min_delivery:.0%} of the frames or "
        "failing; streamwarden doing so while the bench used > 75 % of the cores. "
        "A streamwarden loss on an idle machine is a defect, listed below, and does not stop the run.",
        "",
        "**Targets (issue 7):**",
        "",
        *(_target_lines(bench) or ["- not enough runs to judge."]),
        "",
        "**Frames missing from the recordings or failed runs:**",
        "",
        *loss_lines(bench),
        "",
        "## Recovery latency (streamwarden)",
        "",
        f"Per N: the load generator serving the N cameras is SIGKILLed {s.faults} time(s), kept down "
        f"{s.down:g} s, "
        "restarted on the same port; times come from the engine's transition events (CLOCK_MONOTONIC, shared "
        'with the runner). "Source back" = the restarted server listens; "first frame recorded" = the '
        "stream's "
        'CONNECTING→PLAYING transition (first frame at the tee that feeds the recorder); "due" = the last '
        '"retry in X s" backoff delay before that attempt. Recovery settings: '
        f"`{json.dumps(RECOVERY_CONFIG)}`; global reconnect budget at its default (10/s, burst 10).",
        "",
        recovery_table(bench) if bench.recovery else "Not run.",
        "",
        "## Control API latency",
        "",
        api_table(bench),
        "",
        "## Profile",
        "",
        profile_section(bench),
        "",
        "## Recovery-policy decisions (pure Python, `bench/policy_bench.py`)",
        "",
        bench.policy or "Not run.",
        "",
    ]
    if plotted:
        sections += [f"![CPU per stream and recovery latency against N]({png.name})", ""]
    text = "\n".join(sections)
    path = s.out / f"{stamp}.md"
    path.write_text(text)
    (s.out / "latest.md").write_text(text.replace(f"]({png.name})", "](latest.png)"))
    if plotted:
        shutil.copyfile(png, s.out / "latest.png")
    return path, text


def plot(bench: Bench, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (pip install '.[bench]')", flush=True)
        return False
    groups = _groups(bench.runs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {(SW, "a"): "o-", (GST, "a"): "s--", (FFMPEG, "a"): "^:", (SW, "b"): "o-."}
    labels = {(SW, "a"): "streamwarden", (GST, "a"): "gst-launch (one process)",
              (FFMPEG, "a"): "ffmpeg per camera", (SW, "b"): "streamwarden + re-serve"}  # fmt: skip
    for key, style in styles.items():
        xs, ys, lo, hi = [], [], [], []
        for n in sorted({r.n for r in bench.runs}):
            runs = [r for r in groups.get((n, key[1], key[0]), []) if not r.error]
            if not runs:
                continue
            cpu = [r.cpu_per_stream * 1000 for r in runs]
            med = statistics.median(cpu)
            xs.append(n)
            ys.append(med)
            lo.append(med - min(cpu))
            hi.append(max(cpu) - med)
        if xs:
            ax1.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3, label=labels[key])
    ns_all = sorted({r.n for r in bench.runs})
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(ns_all, [str(n) for n in ns_all])
    ax1.set_ylim(bottom=0)
    ax1.set_xlabel("streams (N)")
    ax1.set_ylabel("CPU ms per stream-second")
    ax1.set_title("CPU per stream (median, min-max)")
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    rec = {n: r for n, r in sorted(bench.recovery.items()) if not r.get("error") and r.get("reach")}
    if rec:
        ns = list(rec)
        curves: list[tuple[str, str, str]] = [
            ("reach", "source back → first frame, p50", "o-"),
            ("reach", "source back → first frame, p95", "o--"),
            ("due", "backoff delay due, p50", "s:"),
            ("over", "first frame - (back + wait due), p95", "^-."),
        ]
        for field_name, label, style in curves:
            pct = 95 if "p95" in label else 50
            ax2.plot(ns, [percentile(rec[n][field_name], pct) for n in ns], style, label=label)
        ax2.set_xscale("log", base=2)
        ax2.set_xticks(ns, [str(n) for n in ns])
        ax2.set_ylim(bottom=0)
    ax2.set_xlabel("streams (N)")
    ax2.set_ylabel("seconds")
    ax2.set_title("Recovery after the camera server restarts (streamwarden)")
    ax2.grid(True, alpha=0.3)
    if rec:
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- entry point -------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N=1,8, 1 repeat, 8 s windows: a smoke run")
    parser.add_argument("--n", type=_ints, help="stream counts (default 1,8,16,32,64)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--window", type=float, help="measured seconds per run (default 8)")
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--faults", type=int, help="injected disconnects per N (default 3)")
    parser.add_argument("--down", type=float, default=2.0, help="seconds the camera server stays down")
    parser.add_argument("--recovery-n", type=_ints, help="N values for recovery (default: those measured)")
    parser.add_argument("--profile-n", type=int)
    parser.add_argument("--profile-seconds", type=float)
    parser.add_argument("--tools", default=f"{SW},{GST},{FFMPEG}")
    parser.add_argument("--max-busy", type=float, default=0.90)
    parser.add_argument("--min-delivery", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (recordings, logs)")
    parser.add_argument("--skip-recovery", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    a = parser.parse_args(argv)
    quick = bool(a.quick)
    return Settings(
        ns=a.n or ([1, 8] if quick else [1, 8, 16, 32, 64]),
        repeats=a.repeats or (1 if quick else 3),
        window=a.window or 8.0,
        warmup=a.warmup if a.warmup is not None else 1.5,
        faults=a.faults or (2 if quick else 3),
        down=a.down,
        recovery_ns=a.recovery_n,
        profile_n=a.profile_n or (8 if quick else 16),
        profile_seconds=a.profile_seconds or (4.0 if quick else 10.0),
        max_busy=a.max_busy,
        min_delivery=a.min_delivery,
        tools=[t.strip() for t in a.tools.split(",") if t.strip()],
        quick=quick,
        out=a.out,
        keep=bool(a.keep),
        skip_recovery=bool(a.skip_recovery),
        skip_profile=bool(a.skip_profile),
    )


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    def _raise(signum: int, _frame: object) -> None:
        raise BenchInterruptedError(signal.Signals(signum).name)

    old = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    for tool in ("gst-launch-1.0", "ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run `make setup` (it installs the Debian packages)", file=sys.stderr)
            return 2
    started = datetime.now(UTC)
    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="sw-bench-"))
    bench = Bench(settings, workdir)
    print(f"work directory {workdir}", flush=True)
    code = 0
    with _signals_raise():
        try:
            bench.clip = ensure_clip(bench.cache)
            probe = bench.child([PY, SUT, "--probe"], "probe").read_json(60, "PROBE")
            bench.serve_available = bool(probe.get("serve"))
            bench.api_available = bool(probe.get("api"))
            print(
                f"clip {bench.clip}; re-serve {'available' if bench.serve_available else 'NOT available'}; "
                f"API {'available' if bench.api_available else 'NOT available'}",
                flush=True,
            )
            bench.loadgen_port = free_port()
            bench.loadgen, _ = bench.start_loadgen(max(settings.ns), bench.loadgen_port)
            bench.throughput()
            if not settings.skip_profile:
                bench.profile_phase()
            bench.loadgen.close(signal.SIGTERM, timeout=5)
            bench.loadgen = None
            if not settings.skip_recovery:
                bench.recovery_phase()
        except (KeyboardInterrupt, BenchInterruptedError) as exc:
            print(f"interrupted ({exc or 'SIGINT'}): writing what was measured", file=sys.stderr)
            code = 130
        except ChildError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            code = 1
        finally:
            bench.cleanup()
    if code != 130:
        bench.policy = policy_section(settings.quick)
    path, text = write_report(bench, started, time.monotonic() - t_start)
    print()
    print(text)
    print(f"written: {path} and {settings.out / 'latest.md'}", flush=True)
    if settings.keep or code:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
