"""Global reconnect budget.

When a switch reboots, hundreds of cameras drop at once. Per-stream jitter spreads their retries,
but a shared token bucket also caps how many reconnects start per second, so the engine and the
cameras' network are not hit by a thundering herd.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["TokenBucket"]

# Tolerance for float drift in the refill sum, so a token that is due is not reported as 1e-16 short.
_EPSILON = 1e-9


class TokenBucket:
    """Classic token bucket; thread-safe because the API thread reads it while the engine uses it."""

    def __init__(self, rate_per_second: float, burst: int, clock: Callable[[], float]) -> None:
        if not rate_per_second > 0:
            raise ValueError(f"rate_per_second must be > 0: {rate_per_second}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1: {burst}")
        self._rate = rate_per_second
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)  # start full: the first connects after start-up need no wait
        self._last = clock()

    def _refill(self) -> None:
        # Caller holds the lock.
        now = self._clock()
        elapsed = max(0.0, now - self._last)  # tolerate a clock that steps back
        self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)
        self._last = now

    def try_acquire(self) -> bool:
        """Take one token if available; never blocks."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0 - _EPSILON:
                self._tokens = max(0.0, self._tokens - 1.0)
                return True
            return False

    def seconds_until_available(self) -> float:
        """How long until ``try_acquire`` can succeed; 0 if a token is available now."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0 - _EPSILON:
                return 0.0
            return (1.0 - self._tokens) / self._rate

    @property
    def tokens(self) -> float:
        """Tokens available now (fractional while refilling)."""
        with self._lock:
            self._refill()
            return self._tokens
