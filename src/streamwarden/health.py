"""Per-stream health figures, measured per frame (never per RTP packet).

The frame probe runs on a GStreamer streaming thread and only bumps a few integers and
floats (atomic enough under the GIL); everything derived (fps, bitrate, percentiles) is
computed from samples the engine's tick takes on the loop thread.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class FrameMeter:
    """Counts frames of ONE pipeline attempt; gaps are measured within that attempt only."""

    __slots__ = ("bytes", "clock", "first_frame_at", "frames", "keyframes", "last_frame_at", "max_gap")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.frames = 0
        self.keyframes = 0
        self.bytes = 0
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None
        self.max_gap = 0.0

    def on_frame(self, size: int, keyframe: bool) -> bool:
        """Record one frame; returns True for the first frame of this attempt."""
        now = self.clock()
        last = self.last_frame_at
        self.frames += 1
        self.bytes += size
        if keyframe:
            self.keyframes += 1
        self.last_frame_at = now
        if last is None:
            self.first_frame_at = now
            return True
        gap = now - last
        self.max_gap = max(self.max_gap, gap)
        return False


@dataclass
class HealthSnapshot:
    fps: float
    bitrate_bps: float
    last_frame_age_seconds: float | None
    uptime_seconds: float
    playing_seconds: float
    frames_total: int
    bytes_total: int
    keyframes_total: int
    errors_total: int
    errors_by_category: dict[str, int]
    recoveries_total: int
    recoveries_by_category: dict[str, int]
    recovery_seconds_last: float | None
    recovery_seconds_p50: float | None
    recovery_seconds_p95: float | None
    max_frame_gap_seconds: float
    attempts_total: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StreamHealth:
    """Accumulates a stream's figures across pipeline attempts."""

    clock: Callable[[], float] = time.monotonic
    window_seconds: float = 5.0
    created_at: float = field(default=0.0)
    meter: FrameMeter | None = None
    _closed_frames: int = 0
    _closed_bytes: int = 0
    _closed_keyframes: int = 0
    max_frame_gap: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    errors_by_key: Counter[tuple[str, str]] = field(default_factory=Counter)
    recoveries: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    recoveries_total: int = 0
    recoveries_by_category: Counter[str] = field(default_factory=Counter)
    # Last frame of attempts already closed: the age keeps growing through an outage.
    _closed_last_frame_at: float | None = None
    attempts_total: int = 0
    playing_since: float | None = None
    _samples: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=64))

    def __post_init__(self) -> None:
        self.created_at = self.clock()

    def new_meter(self) -> FrameMeter:
        self.close_meter()
        self.meter = FrameMeter(self.clock)
        self.attempts_total += 1
        return self.meter

    def close_meter(self) -> None:
        meter = self.meter
        if meter is None:
            return
        self._closed_frames += meter.frames
        self._closed_bytes += meter.bytes
        self._closed_keyframes += meter.keyframes
        self.max_frame_gap = max(self.max_frame_gap, meter.max_gap)
        if meter.last_frame_at is not None:
            self._closed_last_frame_at = meter.last_frame_at
        self.meter = None

    @property
    def frames_total(self) -> int:
        return self._closed_frames + (self.meter.frames if self.meter else 0)

    @property
    def bytes_total(self) -> int:
        return self._closed_bytes + (self.meter.bytes if self.meter else 0)

    @property
    def last_frame_at(self) -> float | None:
        """The newest frame of the running attempt, or of an earlier one during an outage."""
        if self.meter is not None and self.meter.last_frame_at is not None:
            return self.meter.last_frame_at
        return self._closed_last_frame_at

    def record_error(self, category: str, transience: str) -> None:
        self.errors[category] += 1
        self.errors_by_key[(category, transience)] += 1

    def record_recovery(self, seconds: float, category: str = "unknown") -> None:
        """``category`` is that of the failure that started the outage."""
        self.recoveries.append(seconds)
        self.recoveries_total += 1
        self.recoveries_by_category[category] += 1

    def sample(self) -> None:
        """Take a (time, frames, bytes) sample; called by the engine tick."""
        self._samples.append((self.clock(), self.frames_total, self.bytes_total))

    def _rate(self) -> tuple[float, float]:
        now = self.clock()
        window = [s for s in self._samples if now - s[0] <= self.window_seconds]
        if len(window) < 2:
            return 0.0, 0.0
        (t0, f0, b0), (t1, f1, b1) = window[0], window[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, 0.0
        return (f1 - f0) / span, (b1 - b0) * 8 / span

    def snapshot(self) -> HealthSnapshot:
        now = self.clock()
        fps, bitrate = self._rate()
        last = self.last_frame_at
        meter_gap = self.meter.max_gap if self.meter else 0.0
        ordered = sorted(self.recoveries)
        return HealthSnapshot(
            fps=round(fps, 2),
            bitrate_bps=round(bitrate, 1),
            last_frame_age_seconds=None if last is None else round(now - last, 3),
            uptime_seconds=round(now - self.created_at, 3),
            playing_seconds=0.0 if self.playing_since is None else round(now - self.playing_since, 3),
            frames_total=self.frames_total,
            bytes_total=self.bytes_total,
            keyframes_total=self._closed_keyframes + (self.meter.keyframes if self.meter else 0),
            errors_total=sum(self.errors.values()),
            errors_by_category={str(k): v for k, v in self.errors.items()},
            recoveries_total=self.recoveries_total,
            recoveries_by_category=dict(self.recoveries_by_category),
            recovery_seconds_last=round(self.recoveries[-1], 3) if self.recoveries else None,
            recovery_seconds_p50=_percentile(ordered, 50),
            recovery_seconds_p95=_percentile(ordered, 95),
            max_frame_gap_seconds=round(max(self.max_frame_gap, meter_gap), 3),
            attempts_total=self.attempts_total,
        )


def _percentile(ordered: list[float], pct: int) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return round(ordered[0], 3)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return round(cuts[pct - 1], 3)
