"""Resource-pressure shedding: degrade the least important streams first, one step at a time.

When the engine runs out of memory, CPU, file descriptors or threads, everything degrades at once
and the kernel (OOM killer) or a crash picks the victims. Shedding on purpose keeps the important
streams whole: the lowest-priority streams stop re-serving extra clients, then stop recording,
then pause, before anything more important is touched. Steps are spaced by an interval because
resource figures lag behind the action, and relief is restored in exactly the reverse order with
hysteresis so a figure hovering at its limit does not flap streams on and off.

Pure planning: the caller samples the process, applies the returned actions and reports levels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

__all__ = ["ResourceLimits", "ResourceSample", "ShedAction", "ShedLevel", "ShedPlanner", "StreamLoad"]

_MIB = 1024 * 1024
_RESTORE_REASON = "resource pressure cleared"


class ShedLevel(IntEnum):
    """How much of a stream is shed; each level includes the ones below it."""

    NONE = 0
    CLIENTS = 1  # stop serving extra RTSP clients (re-serving costs a tee branch and sockets per client)
    RECORDING = 2  # pause recording (muxing and disk writes)
    PAUSED = 3  # pause the stream itself


@dataclass(frozen=True)
class ResourceLimits:
    """Ceilings for the engine process; None = unlimited.

    ``max_streams`` only gates admission (a stream count at its limit is normal, not pressure).
    Pressure clears once every limited figure is below ``limit * clear_ratio``.
    """

    max_rss_bytes: int | None = None
    max_cpu_percent: float | None = None  # of one core, as top shows it: 2 busy cores = 200
    max_open_fds: int | None = None
    max_threads: int | None = None
    max_streams: int | None = None
    clear_ratio: float = 0.9

    def __post_init__(self) -> None:
        for name in ("max_rss_bytes", "max_cpu_percent", "max_open_fds", "max_threads", "max_streams"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None: {value}")
        if not 0 < self.clear_ratio <= 1:
            raise ValueError(f"clear_ratio must be in (0, 1]: {self.clear_ratio}")


@dataclass(frozen=True)
class ResourceSample:
    """One measurement of the engine process (0 for a figure not measured)."""

    rss_bytes: int = 0
    cpu_percent: float = 0.0
    open_fds: int = 0
    threads: int = 0
    streams: int = 0


@dataclass(frozen=True)
class StreamLoad:
    """A stream as the planner sees it.

    ``serving``/``recording`` say whether the stream is configured to serve/record (whether or not
    that is shed right now): they decide which levels mean anything for it.
    """

    id: str
    priority: int = 0  # higher = more important
    serving: bool = False
    recording: bool = False
    level: ShedLevel = ShedLevel.NONE


@dataclass(frozen=True)
class ShedAction:
    """Move one stream from one level to another; ``reason`` is for the log and the API."""

    stream_id: str
    from_level: ShedLevel
    to_level: ShedLevel
    reason: str

    @property
    def shedding(self) -> bool:
        """True when this sheds more, False when it restores."""
        return self.to_level > self.from_level


def _stops(stream: StreamLoad) -> tuple[ShedLevel, ...]:
    # The levels at which this stream is actually different from the level below.
    stops = [ShedLevel.NONE]
    if stream.serving:
        stops.append(ShedLevel.CLIENTS)
    if stream.recording:
        stops.append(ShedLevel.RECORDING)
    stops.append(ShedLevel.PAUSED)
    return tuple(stops)


def _next_stop(stream: StreamLoad) -> ShedLevel | None:
    return next((level for level in _stops(stream) if level > stream.level), None)


def _previous_stop(stream: StreamLoad) -> ShedLevel | None:
    return next((level for level in reversed(_stops(stream)) if level < stream.level), None)


def _by_priority(streams: Sequence[StreamLoad]) -> dict[int, list[StreamLoad]]:
    groups: dict[int, list[StreamLoad]] = {}
    for stream in streams:
        groups.setdefault(stream.priority, []).append(stream)
    return groups


class ShedPlanner:
    """Turns resource samples into at most one shedding (or restoring) step per interval.

    Shedding (while some figure is over its limit): take the lowest priority whose streams are not
    all PAUSED; move every stream of it whose next meaningful level is the lowest such level in
    the group to that level. A level is meaningful for a stream when it sheds something: CLIENTS
    only if it serves, RECORDING only if it records, PAUSED always; so a stream that does not
    serve goes straight to RECORDING (or PAUSED). No stream is shed while a strictly
    lower-priority stream is below PAUSED.

    Restoring (only while every figure is below ``limit * clear_ratio``): the exact reverse, the
    highest priority with shed streams first, in it the streams at the highest level first, each
    back to its previous meaningful level. Between the two thresholds nothing moves, whichever
    way the figures came from: restoring at 95 % of a limit would overshoot it.
    """

    def __init__(
        self,
        limits: ResourceLimits,
        step_interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not step_interval_seconds >= 0:
            raise ValueError(f"step_interval_seconds must be >= 0: {step_interval_seconds}")
        self.limits = limits
        self.step_interval_seconds = step_interval_seconds
        self._clock = clock
        self._under_pressure = False
        self._last_step = -math.inf

    @property
    def under_pressure(self) -> bool:
        """The hysteresis state: set when a limit is exceeded, cleared only below the clear ratio."""
        return self._under_pressure

    def _figures(self, sample: ResourceSample) -> list[tuple[str, float, float]]:
        lim = self.limits
        figures: list[tuple[str, float, float | None]] = [
            ("rss", sample.rss_bytes, lim.max_rss_bytes),
            ("cpu", sample.cpu_percent, lim.max_cpu_percent),
            ("open fds", sample.open_fds, lim.max_open_fds),
            ("threads", sample.threads, lim.max_threads),
        ]
        return [(name, value, limit) for name, value, limit in figures if limit is not None]

    def pressure(self, sample: ResourceSample) -> list[str]:
        """The limits ``sample`` exceeds, human readable ("rss 612 MiB > limit 500 MiB"); pure."""
        out = []
        for name, value, limit in self._figures(sample):
            if value > limit:
                if name == "rss":
                    out.append(f"rss {value / _MIB:.0f} MiB > limit {limit / _MIB:.0f} MiB")
                elif name == "cpu":
                    out.append(f"cpu {value:.0f}% > limit {limit:.0f}%")
                else:
                    out.append(f"{name} {value:.0f} > limit {limit:.0f}")
        return out

    def _cleared(self, sample: ResourceSample) -> bool:
        ratio = self.limits.clear_ratio
        return all(value < limit * ratio for _, value, limit in self._figures(sample))

    def plan(self, sample: ResourceSample, streams: Sequence[StreamLoad]) -> list[ShedAction]:
        """The next step (possibly several streams moving together), or [] (interval not over,
        nothing to do, or figures between the clear and the pressure threshold)."""
        exceeded = self.pressure(sample)
        cleared = not exceeded and self._cleared(sample)
        if exceeded:
            self._under_pressure = True
        elif cleared:
            self._under_pressure = False
        now = self._clock()
        if now - self._last_step < self.step_interval_seconds:
            return []
        if exceeded:
            actions = self._shed_step(streams, "; ".join(exceeded))
        elif cleared:
            actions = self._restore_step(streams)
        else:
            actions = []
        if actions:
            self._last_step = now
        return actions

    @staticmethod
    def _shed_step(streams: Sequence[StreamLoad], reason: str) -> list[ShedAction]:
        groups = _by_priority(streams)
        for priority in sorted(groups):
            pending = [(s, n) for s in groups[priority] if (n := _next_stop(s)) is not None]
            if not pending:
                continue  # the whole group is PAUSED: the next priority is next
            target = min(n for _, n in pending)
            return [
                ShedAction(s.id, s.level, target, reason)
                for s, n in sorted(pending, key=lambda p: p[0].id)
                if n == target
            ]
        return []

    @staticmethod
    def _restore_step(streams: Sequence[StreamLoad]) -> list[ShedAction]:
        groups = _by_priority(streams)
        for priority in sorted(groups, reverse=True):
            shed = [s for s in groups[priority] if s.level > ShedLevel.NONE]
            if not shed:
                continue
            top = max(s.level for s in shed)
            actions = []
            for stream in sorted(shed, key=lambda s: s.id):
                previous = _previous_stop(stream)
                if stream.level == top and previous is not None:
                    actions.append(ShedAction(stream.id, stream.level, previous, _RESTORE_REASON))
            return actions
        return []

    def admit(self, sample: ResourceSample, new_stream_priority: int = 0) -> str | None:
        """Why a new stream must not start now (stream limit reached, or under pressure), else None.

        Adding load under pressure would only make the planner shed more, so even a high-priority
        stream waits until pressure clears; the priority is named in the reason for the operator.
        """
        max_streams = self.limits.max_streams
        if max_streams is not None and sample.streams >= max_streams:
            return f"max_streams reached: {sample.streams} streams (limit {max_streams})"
        exceeded = self.pressure(sample)
        if exceeded or self._under_pressure:
            detail = "; ".join(exceeded) or (
                f"waiting for every figure to fall below {self.limits.clear_ratio:.0%} of its limit"
            )
            return f"under resource pressure, not starting a priority {new_stream_priority} stream: {detail}"
        return None
