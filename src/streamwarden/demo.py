"""``streamwarden demo``: four supervised streams and a camera that misbehaves on schedule.

The test camera runs as a child process rather than a thread: a silent stall needs
SIGSTOP (the socket stays open, nothing is sent), and a thread cannot be frozen alone.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamwarden.config import StreamSpec, parse_stream_spec
from streamwarden.engine import Engine
from streamwarden.logs import setup_logging
from streamwarden.media.clip import ensure_test_clip
from streamwarden.state import UP_STATES, StreamState, TransitionEvent
from streamwarden.testing.camera import CameraProcess, free_port

_STATE_STYLE = {
    StreamState.PLAYING: "green",
    StreamState.DEGRADED: "yellow",
    StreamState.CONNECTING: "yellow",
    StreamState.STARTING: "yellow",
    StreamState.BACKOFF: "yellow",
    StreamState.STALLED: "red",
    StreamState.QUARANTINED: "magenta",
    StreamState.FAILED: "red bold",
    StreamState.STOPPED: "dim",
}


@dataclass
class Fault:
    at: float  # seconds after start
    name: str
    down_for: float  # how long the camera stays unusable
    started: float | None = None
    ended: float | None = None
    detected: dict[str, float] = field(default_factory=dict)  # stream -> seconds after fault
    recovered: dict[str, float] = field(default_factory=dict)  # stream -> seconds after camera back


def _schedule(duration: float) -> list[Fault]:
    """Three faults spread over the run; shorter runs get them compressed."""
    scale = max(0.3, min(1.0, duration / 60.0))
    return [
        Fault(at=8 * scale, name="TCP reset (camera killed, back at once)", down_for=0.0),
        Fault(at=20 * scale, name="camera stopped for 5 s", down_for=5.0),
        Fault(at=36 * scale, name="silent stall (SIGSTOP 6 s)", down_for=6.0),
    ]


def _specs(clips: list[Path], camera: CameraProcess, workdir: Path) -> list[StreamSpec]:
    recovery = {
        "backoff": {"initial_seconds": 0.5, "multiplier": 2, "max_seconds": 4, "jitter": "equal"},
        "breaker": {"failure_threshold": 8, "open_seconds": 5},
        "stall_timeout_seconds": 2,
    }
    return [
        parse_stream_spec(
            {
                "id": "lobby-mp4",
                "source": {"type": "file", "path": str(clips[0])},
                "record": {"dir": str(workdir / "recordings"), "format": "mkv", "segment_seconds": 20},
                "recovery": recovery,
            }
        ),
        parse_stream_spec(
            {"id": "yard-mkv", "source": {"type": "file", "path": str(clips[1])}, "recovery": recovery}
        ),
        parse_stream_spec(
            {
                "id": "cam-tcp",
                "source": {
                    "type": "rtsp",
                    "uri": camera.url("/cam1"),
                    "transport": "tcp",
                    "connect_timeout_seconds": 3,
                },
                "recovery": recovery,
            }
        ),
        parse_stream_spec(
            {
                "id": "cam-udp",
                "source": {
                    "type": "rtsp",
                    "uri": camera.url("/cam2"),
                    "transport": "udp",
                    "connect_timeout_seconds": 3,
                },
                "recovery": recovery,
            }
        ),
    ]


def _table(engine: Engine, elapsed: float, duration: float, status: str) -> Group:
    table = Table(title=f"streamwarden demo — {elapsed:4.0f} / {duration:.0f} s", expand=True)
    for column in ("stream", "state", "fps", "last frame", "recov.", "last recov."):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="ellipsis", no_wrap=True, min_width=20, ratio=1)
    for info in engine.list_streams():
        health = info["health"]
        state = StreamState(info["state"])
        age = health["last_frame_age_seconds"]
        last = health["recovery_seconds_last"]
        table.add_row(
            f"{info['id']} ({info['source_type']})",
            Text(state.value, style=_STATE_STYLE.get(state, "")),
            f"{health['fps']:.1f}",
            "-" if age is None else f"{age:.2f} s",
            str(health["recoveries_total"]),
            "-" if last is None else f"{last:.2f} s",
            info["reason"],
        )
    return Group(table, Text(status + "\n"))


def run_demo(duration: float = 60.0, workdir: Path | None = None) -> int:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="streamwarden-demo-") as scratch:
        base = workdir or Path(scratch)
        base.mkdir(parents=True, exist_ok=True)
        log_path = base / "demo.log"
        setup_logging("INFO", path=log_path)  # the live table owns the terminal
        console.print(f"demo files in {base}; log in {log_path}")
        clips = [
            ensure_test_clip(base / "lobby.mp4", seconds=4.0),
            ensure_test_clip(base / "yard.mkv", seconds=3.0),
        ]
        faults = _schedule(duration)
        camera = CameraProcess(free_port(), mounts=("/cam1", "/cam2"))
        camera.start()
        engine = Engine()
        transitions: list[tuple[float, str, TransitionEvent]] = []
        engine.add_listener(lambda sid, ev: transitions.append((time.monotonic(), sid, ev)))
        engine.start()
        started = time.monotonic()
        try:
            for spec in _specs(clips, camera, base):
                engine.add_stream(spec)
            status = "all streams starting"
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while (elapsed := time.monotonic() - started) < duration:
                    status = _drive_faults(camera, faults, elapsed, status)
                    live.update(_table(engine, elapsed, duration, status))
                    time.sleep(0.25)
            _measure(faults, transitions, started)
            _summary(console, engine, faults)
        except KeyboardInterrupt:
            console.print("interrupted")
        finally:
            engine.stop()
            camera.stop()
    return 0


def _drive_faults(camera: CameraProcess, faults: list[Fault], elapsed: float, status: str) -> str:
    for fault in faults:
        if fault.started is None and elapsed >= fault.at:
            fault.started = elapsed
            if fault.name.startswith("silent"):
                camera.pause()
            else:
                camera.kill()
                if fault.down_for == 0:
                    camera.start()
                    fault.ended = elapsed
            status = f"fault at {elapsed:.0f} s: {fault.name}"
        elif fault.started is not None and fault.ended is None and elapsed >= fault.started + fault.down_for:
            if fault.name.startswith("silent"):
                camera.resume()
            else:
                camera.start()
            fault.ended = elapsed
            status = f"camera back at {elapsed:.0f} s after: {fault.name}"
    return status


def _measure(
    faults: list[Fault], transitions: list[tuple[float, str, TransitionEvent]], started: float
) -> None:
    """Detection: fault → first failure transition; recovery: camera back → PLAYING."""
    for index, fault in enumerate(faults):
        if fault.started is None or fault.ended is None:
            continue
        window_end = faults[index + 1].at if index + 1 < len(faults) else float("inf")
        for at, stream, event in transitions:
            t = at - started
            if not stream.startswith("cam") or t < fault.started or t >= window_end:
                continue
            if stream not in fault.detected and event.to_state in (StreamState.BACKOFF, StreamState.STALLED):
                fault.detected[stream] = t - fault.started
            if event.to_state in UP_STATES and t >= fault.ended and stream not in fault.recovered:
                fault.recovered[stream] = t - fault.ended


def _summary(console: Console, engine: Engine, faults: list[Fault]) -> None:
    table = Table(title="faults injected")
    for column in ("fault", "stream", "detected after", "PLAYING after camera back"):
        table.add_column(column)
    for fault in faults:
        for stream in ("cam-tcp", "cam-udp"):
            detected = fault.detected.get(stream)
            recovered = fault.recovered.get(stream)
            table.add_row(
                fault.name,
                stream,
                "-" if detected is None else f"{detected:.2f} s",
                "not recovered" if recovered is None else f"{recovered:.2f} s",
            )
    console.print(table)
    streams = Table(title="streams")
    for column in ("stream", "state", "frames", "recoveries", "recovery p50", "recovery p95", "errors"):
        streams.add_column(column)
    for info in engine.list_streams():
        health = info["health"]
        streams.add_row(
            info["id"],
            info["state"],
            str(health["frames_total"]),
            str(health["recoveries_total"]),
            _seconds(health["recovery_seconds_p50"]),
            _seconds(health["recovery_seconds_p95"]),
            ", ".join(f"{k}={v}" for k, v in health["errors_by_category"].items()) or "-",
        )
    console.print(streams)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"
