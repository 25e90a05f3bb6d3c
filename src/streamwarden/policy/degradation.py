"""Transport degradation of one stream, judged from RTP counters over a sliding window.

Frames still arriving is not the same as a healthy link: 5 % packet loss keeps the frame counter
moving while the picture smears. This turns the cumulative counters that
``media.rtpstats.RtpStats.as_dict()`` gives once a second into rates over the last
``window_seconds`` and says when a stream becomes degraded (with reasons a person can act on,
e.g. "packet loss 9.8% > 2%") and when it clears.

Rates come from per-tick DELTAS of the cumulative counters, so an old burst of loss leaves the
window and the stream recovers; reading the lifetime totals would keep it degraded for good. A
counter that goes backwards (``packets_received`` or ``jitterbuffer_pushed``) means the pipeline
was rebuilt and counts from zero again: that tick's delta is the new value itself. Other counters
may legitimately step back (``packets_lost`` falls when duplicates arrive): their deltas are
summed signed and the window total is clamped at zero.

Loss is the worse of two views: the network's (RFC 3550 ``packets_lost`` against packets
expected) and the jitter buffer's (``jitterbuffer_lost`` against packets it handled: what never
reached the decoder, packets that came too late included). Duplicates hide network loss from the
first; the second sees it. Late packets are counted against packets received. Jitter and RTT are
gauges: the window figure is their mean. Loss and lateness are not judged on fewer than
``min_packets`` packets in the window (one lost packet of ten is noise, not 10 % loss), and no
traffic at all is no degradation: a stalled stream is the frame watchdog's business.

Pure Python and not thread-safe: one detector per stream, fed from one thread with a clock that
tests can fake.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["DegradationChange", "DegradationDetector", "DegradationThresholds"]

_RESET_KEYS = ("packets_received", "jitterbuffer_pushed")
_COUNTERS = ("packets_received", "packets_lost", "jitterbuffer_pushed", "jitterbuffer_lost", "packets_late")


@dataclass(frozen=True)
class DegradationThresholds:
    """A figure strictly above its maximum degrades the stream; None disables that check."""

    max_loss_percent: float | None = 2.0
    max_jitter_ms: float | None = 50.0
    max_late_percent: float | None = 2.0
    max_rtt_ms: float | None = None
    window_seconds: float = 10.0
    clear_after_seconds: float = 5.0
    min_packets: int = 50

    def __post_init__(self) -> None:
        for name in ("max_loss_percent", "max_jitter_ms", "max_late_percent", "max_rtt_ms"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0 or None: {value}")
        if not self.window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0: {self.window_seconds}")
        if not self.clear_after_seconds >= 0:
            raise ValueError(f"clear_after_seconds must be >= 0: {self.clear_after_seconds}")
        if self.min_packets < 1:
            raise ValueError(f"min_packets must be >= 1: {self.min_packets}")


@dataclass(frozen=True)
class DegradationChange:
    """The stream became degraded (``degraded``) or cleared; figures are the window's then."""

    degraded: bool
    reasons: tuple[str, ...]
    figures: Mapping[str, float | None]
    at: float


@dataclass
class _Sample:
    at: float
    deltas: dict[str, float] = field(default_factory=dict)
    present: frozenset[str] = frozenset()  # counters the stats carried this tick
    jitter_ms: float | None = None
    rtt_ms: float | None = None


class DegradationDetector:
    """Windowed loss / jitter / late / RTT figures of one stream, with hysteresis on clearing."""

    def __init__(
        self, thresholds: DegradationThresholds | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.thresholds = thresholds or DegradationThresholds()
        self._clock = clock
        self._samples: deque[_Sample] = deque()
        self._previous: dict[str, float] | None = None
        self._degraded = False
        self._reasons: list[str] = []
        self._clear_since: float | None = None
        self.resets = 0  # counter resets seen (pipeline rebuilds)

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def reasons(self) -> list[str]:
        """Why the stream is degraded (the latest figures over threshold); empty when it is not."""
        return list(self._reasons)

    def update(self, stats: Mapping[str, float | None]) -> DegradationChange | None:
        """Takes this tick's cumulative counters; returns a change when the verdict flips."""
        now = self._clock()
        current = {key: float(value) for key in _COUNTERS if (value := stats.get(key)) is not None}
        sample = _Sample(at=now, present=frozenset(current))
        sample.jitter_ms = _gauge(stats.get("jitter_ms"))
        sample.rtt_ms = _gauge(stats.get("rtt_ms"))
        previous = self._previous
        if previous is not None:
            reset = any(key in current and current[key] < previous.get(key, 0.0) for key in _RESET_KEYS)
            if reset:
                self.resets += 1
            for key, value in current.items():
                sample.deltas[key] = value if reset or key not in previous else value - previous[key]
        self._previous = current
        self._samples.append(sample)
        self._prune(now)
        return self._judge(now)

    def reset(self) -> None:
        """Forgets the window and the verdict (e.g. the stream was stopped on purpose)."""
        self._samples.clear()
        self._previous = None
        self._degraded = False
        self._reasons = []
        self._clear_since = None

    def window_figures(self) -> dict[str, float | None]:
        """loss_percent, jitter_ms, late_percent and rtt_ms over the window (None: not enough data)."""
        self._prune(self._clock())
        total: dict[str, float] = {key: 0.0 for key in _COUNTERS}
        seen: set[str] = set()
        jitters: list[float] = []
        rtts: list[float] = []
        for sample in self._samples:
            for key, delta in sample.deltas.items():
                total[key] += delta
            seen |= sample.present
            if sample.jitter_ms is not None:
                jitters.append(sample.jitter_ms)
            if sample.rtt_ms is not None:
                rtts.append(sample.rtt_ms)
        minimum = self.thresholds.min_packets
        received = max(0.0, total["packets_received"])
        losses: list[float] = []
        if "packets_lost" in seen and "packets_received" in seen:
            lost = max(0.0, total["packets_lost"])
            if received + lost >= minimum:
                losses.append(100.0 * lost / (received + lost))
        if "jitterbuffer_lost" in seen and "jitterbuffer_pushed" in seen:
            jb_lost = max(0.0, total["jitterbuffer_lost"])
            handled = max(0.0, total["jitterbuffer_pushed"]) + jb_lost
            if handled >= minimum:
                losses.append(100.0 * jb_lost / handled)
        late: float | None = None
        if "packets_late" in seen and received >= minimum:
            late = 100.0 * max(0.0, total["packets_late"]) / received
        return {
            "loss_percent": max(losses) if losses else None,
            "jitter_ms": sum(jitters) / len(jitters) if jitters else None,
            "late_percent": late,
            "rtt_ms": sum(rtts) / len(rtts) if rtts else None,
        }

    def _prune(self, now: float) -> None:
        horizon = now - self.thresholds.window_seconds
        while self._samples and self._samples[0].at <= horizon:
            self._samples.popleft()

    def _over(self, figures: Mapping[str, float | None]) -> list[str]:
        t = self.thresholds
        checks = (
            ("loss_percent", t.max_loss_percent, "packet loss {:.1f}% > {:g}%"),
            ("jitter_ms", t.max_jitter_ms, "jitter {:.1f} ms > {:g} ms"),
            ("late_percent", t.max_late_percent, "late packets {:.1f}% > {:g}%"),
            ("rtt_ms", t.max_rtt_ms, "round-trip time {:.0f} ms > {:g} ms"),
        )
        reasons = []
        for key, limit, template in checks:
            value = figures[key]
            if limit is not None and value is not None and value > limit:
                reasons.append(template.format(value, limit))
        return reasons

    def _judge(self, now: float) -> DegradationChange | None:
        figures = self.window_figures()
        reasons = self._over(figures)
        if reasons:
            self._clear_since = None
            self._reasons = reasons
            if not self._degraded:
                self._degraded = True
                return DegradationChange(True, tuple(reasons), figures, now)
            return None
        if not self._degraded:
            return None
        if self._clear_since is None:
            self._clear_since = now
        if now - self._clear_since < self.thresholds.clear_after_seconds:
            return None
        self._degraded = False
        self._reasons = []
        self._clear_since = None
        return DegradationChange(False, (), figures, now)


def _gauge(value: float | None) -> float | None:
    return None if value is None else float(value)
