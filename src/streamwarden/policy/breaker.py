"""Event-driven circuit breaker for one stream source.

Why our own: the PyPI breakers (pybreaker, circuitbreaker, purgatory, aiobreaker) only wrap a
function call and judge its return/exception. Our "calls" are GStreamer pipelines whose success or
failure arrives later as bus messages, so we need record_success()/record_failure() driven by
events, plus an injectable clock for deterministic tests. None of them offers both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    """Classic breaker states; HALF_OPEN lets exactly one trial attempt through."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When to stop hammering a source, and for how long."""

    failure_threshold: int = 5
    open_seconds: float = 30.0
    open_multiplier: float = 2.0  # each re-open from half-open multiplies the hold
    max_open_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1: {self.failure_threshold}")
        if not self.open_seconds >= 0:
            raise ValueError(f"open_seconds must be >= 0: {self.open_seconds}")
        if not self.open_multiplier >= 1:
            raise ValueError(f"open_multiplier must be >= 1: {self.open_multiplier}")
        if not self.max_open_seconds >= self.open_seconds:
            raise ValueError(
                f"max_open_seconds ({self.max_open_seconds}) must be >= open_seconds ({self.open_seconds})"
            )


class CircuitBreaker:
    """Counts consecutive failures; opens at the threshold; probes with one trial after the hold.

    Not thread-safe: it belongs to the stream's supervisor, which runs on one thread.
    """

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.consecutive_failures = 0
        self.trips = 0  # total openings, for metrics; survives reset()
        self.current_hold_seconds = policy.open_seconds

    @property
    def policy(self) -> BreakerPolicy:
        """The settings in force."""
        return self._policy

    @policy.setter
    def policy(self, policy: BreakerPolicy) -> None:
        # A closed breaker starts fresh from the new hold; an open one keeps its hold but obeys the new cap.
        self._policy = policy
        if self._state is BreakerState.CLOSED:
            self.current_hold_seconds = policy.open_seconds
        else:
            self.current_hold_seconds = min(self.current_hold_seconds, policy.max_open_seconds)

    @property
    def state(self) -> BreakerState:
        """Current state; reading it moves OPEN to HALF_OPEN once the hold has passed."""
        if self._state is BreakerState.OPEN and self._clock() >= self._opened_at + self.current_hold_seconds:
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        return self._state

    def allow_attempt(self) -> bool:
        """Whether the caller may try to connect now; in HALF_OPEN only one trial is granted."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        """The source works again: close and forget the escalated hold."""
        self._close()

    def record_failure(self) -> bool:
        """Count a failure; return True if this failure opened (tripped) the breaker."""
        state = self.state
        self.consecutive_failures += 1
        if state is BreakerState.CLOSED:
            if self.consecutive_failures >= self._policy.failure_threshold:
                self._trip()
                return True
            return False
        if state is BreakerState.HALF_OPEN:
            # The trial failed: the source is still down, so wait longer before the next probe.
            p = self._policy
            self.current_hold_seconds = min(p.max_open_seconds, self.current_hold_seconds * p.open_multiplier)
            self._trip()
            return True
        # Already OPEN (a late failure from an earlier attempt): count it, but do not extend the hold.
        return False

    def seconds_until_half_open(self) -> float:
        """Time left in the current hold; 0 when not OPEN."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.current_hold_seconds - self._clock())

    def reset(self) -> None:
        """Operator reset: close at once (the trips total is kept for metrics)."""
        self._close()

    def _trip(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._trial_in_flight = False
        self.trips += 1

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._trial_in_flight = False
        self.consecutive_failures = 0
        self.current_hold_seconds = self._policy.open_seconds
