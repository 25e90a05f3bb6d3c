"""Per-stream health figures, read from counters GStreamer keeps in C (never per frame in Python).

A Python pad probe per frame cost more CPU than the rest of the engine together (see
bench/results): frames and bytes are now counted by an ``identity`` element and polled by
the engine tick (4 Hz). Only the first frame of an attempt is seen by a one-shot probe, so
PLAYING is entered at once. Gaps are therefore measured at poll resolution: a gap is
counted when at least one poll found no new frame, and reported as its proven lower bound.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class FrameMeter:
    """Frames of ONE pipeline attempt; gaps are measured within that attempt only."""

    __slots__ = (
        "_stagnant_at",
        "bytes",
        "clock",
        "first_frame_at",
        "frames",
        "last_frame_at",
        "max_gap",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.frames = 0
        self.bytes = 0
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None  # the last poll that saw the count advance
        self.max_gap = 0.0
        self._stagnant_at: float | None = None  # the last poll that saw no new frame

    def first_frame_seen(self) -> None:
        """The one-shot probe saw this attempt's first frame (streaming thread)."""
        if self.first_frame_at is None:
            now = self.clock()
            self.first_frame_at = now
            self.last_frame_at = now

    def observe(self, frames: int, size: int) -> None:
        """A poll of the pipeline's counters (loop thread)."""
        now = self.clock()
        if frames > self.frames:
            if self.first_frame_at is None:
                self.first_frame_at = now
            elif self._stagnant_at is not None and self.last_frame_at is not None:
                # No frame in (last_frame_at, _stagnant_at]: the gap lasted at least that long.
                self.max_gap = max(self.max_gap, self._stagnant_at - self.last_frame_at)
            self.frames = frames
            self.bytes = max(self.bytes, size)
            self.last_frame_at = now
            self._stagnant_at = None
        elif self.last_frame_at is not None:
            self._stagnant_at = now


@dataclass
class HealthSnapshot:
    fps: float
    bitrate_bps: float
    last_frame_age_seconds: float | None
    uptime_seconds: float
    playing_seconds: float
    frames_total: int
    bytes_total: int
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

    def fps(self) -> float:
        return self._rate()[0]

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


@dataclass
class MediaQuality:
    """Media figures from the sampling windows (media.mediacheck), kept across attempts."""

    clock: Callable[[], float] = time.monotonic
    windows_total: int = 0
    sampled_frames_total: int = 0
    timestamp_errors_total: int = 0
    corrupt_frames_total: int = 0
    discont_flags_total: int = 0
    learned_fps: float | None = None
    caps_fps: float | None = None
    av_drift_ms: float | None = None  # audio arrives this much later than video (last window)
    av_drift_max_ms: float = 0.0
    _recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))

    def add_window(self, window: Any, caps_fps: float | None = None, audio: Any = None) -> None:
        """``window``/``audio``: ``media.mediacheck.MediaWindow`` (duck-typed: this stays pure)."""
        if audio is not None and audio.offset_ms is not None and window.offset_ms is not None:
            self.av_drift_ms = round(audio.offset_ms - window.offset_ms, 1)
            self.av_drift_max_ms = max(self.av_drift_max_ms, abs(self.av_drift_ms))
        self.windows_total += 1
        self.sampled_frames_total += window.frames
        self.timestamp_errors_total += window.timestamp_errors
        self.corrupt_frames_total += window.corrupt_frames
        self.discont_flags_total += window.discont_flags
        self._recent.append((self.clock(), window.timestamp_errors + window.corrupt_frames))
        if caps_fps:
            self.caps_fps = caps_fps
        # The highest rate the timestamps ever showed: a source that slows down later does not
        # lower its own yardstick. Too few frames say nothing.
        if window.nominal_fps and window.frames >= 10:
            self.learned_fps = max(self.learned_fps or 0.0, min(window.nominal_fps, 1000.0))

    def nominal_fps(self, configured: float | None = None) -> float | None:
        return configured or self.caps_fps or self.learned_fps

    def errors_last_minute(self) -> int:
        """Timestamp errors and corrupt frames seen in the windows of the last 60 s (not extrapolated)."""
        horizon = self.clock() - 60.0
        return sum(count for at, count in self._recent if at >= horizon)

    def reasons(self, config: Any, fps: float, playing_for: float, configured_fps: float | None) -> list[str]:
        """Why the media is degraded (``config``: a ``config.DegradedConfig``); empty when fine."""
        found: list[str] = []
        nominal = self.nominal_fps(configured_fps)
        ratio = config.min_fps_ratio
        if ratio and nominal and playing_for >= config.window_seconds and fps < nominal * ratio:
            found.append(f"frame rate {fps:.1f} < {ratio:.0%} of nominal {nominal:g} fps")
        drift_limit = config.max_av_drift_ms
        if drift_limit is not None and self.av_drift_ms is not None and abs(self.av_drift_ms) > drift_limit:
            found.append(f"audio/video drift {self.av_drift_ms:+.0f} ms > {drift_limit:g} ms")
        limit = config.max_media_errors_per_minute
        if limit is not None:
            errors = self.errors_last_minute()
            if errors > limit:
                found.append(f"{errors} timestamp errors or corrupt frames in the last minute > {limit:g}")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "nominal_fps": self.nominal_fps(),
            "sampled_windows_total": self.windows_total,
            "sampled_frames_total": self.sampled_frames_total,
            "timestamp_errors_total": self.timestamp_errors_total,
            "corrupt_frames_total": self.corrupt_frames_total,
            "discont_flags_total": self.discont_flags_total,
            "media_errors_last_minute": self.errors_last_minute(),
            "av_drift_ms": self.av_drift_ms,
            "av_drift_max_ms": self.av_drift_max_ms,
        }


def _percentile(ordered: list[float], pct: int) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return round(ordered[0], 3)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return round(cuts[pct - 1], 3)
