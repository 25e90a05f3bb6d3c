"""Error-rate alarms per stream or per host, with hysteresis.

A stream that reconnects fine but drops every few seconds never trips the breaker (each success
resets it), yet it is broken for whoever watches it. Counting errors per minute over a sliding
window catches that; two thresholds (raise high, clear low) keep a rate hovering around one
threshold from flapping the alarm on every tick.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["ErrorRateDetector", "RateChange"]


@dataclass(frozen=True)
class RateChange:
    """An alarm transition reported by ``update()``; ``rate`` is errors per minute at that moment."""

    key: str
    kind: Literal["raised", "cleared"]
    rate: float
    at: float


class ErrorRateDetector:
    """Sliding-window error counter per key ("stream:cam1", "host:10.0.0.5", ...).

    Memory is bounded: each key keeps at most ``max_events_per_key`` timestamps (so a reported
    rate saturates at ``max_events_per_key`` per window, which is why it must be at least the
    raise threshold), and at most ``max_keys`` keys are tracked; recording a new key beyond that
    evicts the least recently recorded one (an active alarm evicted that way is reported as
    cleared). Keys without recent errors are dropped by ``update()``. Not thread-safe.
    """

    def __init__(
        self,
        window_seconds: float = 60.0,
        raise_per_minute: float = 6.0,
        clear_per_minute: float = 2.0,
        max_events_per_key: int | None = None,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0: {window_seconds}")
        if not raise_per_minute > 0:
            raise ValueError(f"raise_per_minute must be > 0: {raise_per_minute}")
        if not 0 <= clear_per_minute < raise_per_minute:
            raise ValueError(
                f"clear_per_minute must be >= 0 and below raise_per_minute ({raise_per_minute}): "
                f"{clear_per_minute}"
            )
        minutes = window_seconds / 60.0
        needed = math.ceil(raise_per_minute * minutes)  # events in the window that reach the raise rate
        if max_events_per_key is None:
            max_events_per_key = max(16, 4 * needed)  # room to report rates well above the threshold
        if max_events_per_key < needed:
            raise ValueError(
                f"max_events_per_key ({max_events_per_key}) must be >= {needed}: "
                "otherwise the raise threshold can never be reached"
            )
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1: {max_keys}")
        self.window_seconds = window_seconds
        self.raise_per_minute = raise_per_minute
        self.clear_per_minute = clear_per_minute
        self.max_events_per_key = max_events_per_key
        self.max_keys = max_keys
        self._minutes = minutes
        self._clock = clock
        self._events: dict[str, deque[float]] = {}  # insertion order = least recently recorded first
        self._active: set[str] = set()
        self._evicted: list[str] = []  # active keys evicted since the last update()

    def record(self, key: str) -> None:
        """Count one error for ``key`` now."""
        events = self._events.pop(key, None)  # re-inserted below: keeps the dict in LRU order
        if events is None:
            if len(self._events) >= self.max_keys:
                oldest = next(iter(self._events))
                del self._events[oldest]
                if oldest in self._active:
                    self._active.discard(oldest)
                    self._evicted.append(oldest)
            events = deque(maxlen=self.max_events_per_key)
        events.append(self._clock())
        self._events[key] = events

    def rate(self, key: str) -> float:
        """Errors per minute for ``key`` over the window (0 for unknown keys)."""
        events = self._events.get(key)
        if events is None:
            return 0.0
        self._prune(events, self._clock() - self.window_seconds)
        return len(events) / self._minutes

    def update(self) -> list[RateChange]:
        """Re-evaluate every key; report alarms raised (rate >= raise) and cleared (rate <= clear)."""
        now = self._clock()
        horizon = now - self.window_seconds
        changes = [RateChange(key, "cleared", 0.0, now) for key in self._evicted]
        self._evicted.clear()
        idle: list[str] = []
        for key, events in self._events.items():
            self._prune(events, horizon)
            rate = len(events) / self._minutes
            if key in self._active:
                if rate <= self.clear_per_minute:
                    self._active.discard(key)
                    changes.append(RateChange(key, "cleared", rate, now))
            elif rate >= self.raise_per_minute:
                self._active.add(key)
                changes.append(RateChange(key, "raised", rate, now))
            if not events and key not in self._active:
                idle.append(key)
        for key in idle:
            del self._events[key]
        return changes

    def active(self) -> dict[str, float]:
        """Keys whose alarm is raised, with their current rate (errors per minute)."""
        return {key: self.rate(key) for key in sorted(self._active)}

    def forget(self, key: str) -> None:
        """Drop a key (stream removed); an active alarm on it ends silently."""
        self._events.pop(key, None)
        self._active.discard(key)

    def __len__(self) -> int:
        """Keys tracked."""
        return len(self._events)

    @staticmethod
    def _prune(events: deque[float], horizon: float) -> None:
        while events and events[0] < horizon:
            events.popleft()
