"""Quarantine: park a source that keeps tripping its breaker.

A breaker that opens again and again within a short window means the source is broken for real
(wrong URL, dead camera). Quarantine stops retrying it for a long time, so it costs nothing and
does not flood the logs, yet it is retried automatically later in case someone fixed it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Quarantine", "QuarantinePolicy"]


@dataclass(frozen=True)
class QuarantinePolicy:
    """How many breaker trips within which window send a source to quarantine, and for how long."""

    trips: int = 3  # breaker openings ...
    window_seconds: float = 600.0  # ... within this window put the source in quarantine
    quarantine_seconds: float = 1800.0  # then it is retried again automatically

    def __post_init__(self) -> None:
        if self.trips < 1:
            raise ValueError(f"trips must be >= 1: {self.trips}")
        if not self.window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0: {self.window_seconds}")
        if not self.quarantine_seconds >= 0:
            raise ValueError(f"quarantine_seconds must be >= 0: {self.quarantine_seconds}")


class Quarantine:
    """Sliding-window trip counter with a self-expiring quarantine flag."""

    def __init__(self, policy: QuarantinePolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.reason: str | None = None  # set by the caller when quarantining; shown to operators
        self._clock = clock
        self._trip_times: deque[float] = deque()
        self._until: float | None = None

    def record_trip(self) -> bool:
        """Note one breaker opening; return True if it puts the source in quarantine now."""
        if self.active:
            return False  # already quarantined: nothing new to report
        now = self._clock()
        self._trip_times.append(now)
        horizon = now - self.policy.window_seconds
        while self._trip_times and self._trip_times[0] < horizon:
            self._trip_times.popleft()
        if len(self._trip_times) < self.policy.trips:
            return False
        self._until = now + self.policy.quarantine_seconds
        # Start over after quarantine: the source earns a full window of new trips before the next one.
        self._trip_times.clear()
        return True

    @property
    def active(self) -> bool:
        """True while quarantined; turns False by itself once ``quarantine_seconds`` have passed."""
        if self._until is not None and self._clock() >= self._until:
            self._until = None
            self.reason = None
        return self._until is not None

    def seconds_remaining(self) -> float:
        """Time until the automatic retry; 0 when not quarantined."""
        if not self.active or self._until is None:
            return 0.0
        return max(0.0, self._until - self._clock())

    def impose(self, seconds: float, reason: str) -> None:
        """Quarantine now for ``seconds`` (a stream restored from the state file keeps its term)."""
        self._until = self._clock() + max(0.0, seconds)
        self.reason = reason

    def release(self) -> None:
        """Operator resume: lift quarantine now and forget the trip history."""
        self._until = None
        self._trip_times.clear()
        self.reason = None
