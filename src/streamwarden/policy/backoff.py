"""Reconnect delays: capped exponential backoff with jitter.

Jitter matters because many cameras usually fail together (a switch reboots, an NVR restarts):
without it they would all reconnect in the same instant and fail again together. The modes follow
the AWS architecture blog post "Exponential Backoff and Jitter".
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Backoff", "BackoffPolicy", "JitterMode"]


class JitterMode(StrEnum):
    """How a delay is randomised around the exponential base."""

    NONE = "none"  # deterministic base delay; only for tests and single streams
    FULL = "full"  # uniform(0, base): best spreading, may retry almost at once
    EQUAL = "equal"  # base/2 + uniform(0, base/2): keeps at least half the wait
    DECORRELATED = "decorrelated"  # uniform(initial, previous*3): grows from the last delay, not the count


@dataclass(frozen=True)
class BackoffPolicy:
    """Immutable backoff settings; validated here so a bad config fails at load, not at 3 a.m."""

    initial_seconds: float = 1.0
    multiplier: float = 2.0
    max_seconds: float = 60.0
    jitter: JitterMode = JitterMode.FULL
    max_attempts: int | None = None  # None = unlimited
    reset_after_seconds: float = 30.0  # stable time after which the attempt counter resets

    def __post_init__(self) -> None:
        if not self.initial_seconds > 0:
            raise ValueError(
                f"initial_seconds must be > 0 (a zero delay is a hot loop): {self.initial_seconds}"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1: {self.multiplier}")
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0: {self.max_seconds}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None: {self.max_attempts}")
        if not self.reset_after_seconds >= 0:
            raise ValueError(f"reset_after_seconds must be >= 0: {self.reset_after_seconds}")
        # Accept plain strings from config ("full") and normalise them to the enum.
        object.__setattr__(self, "jitter", JitterMode(self.jitter))


class Backoff:
    """Per-stream attempt counter that turns failures into delays.

    ``policy`` is a plain attribute so a running stream can be given new settings without losing
    its attempt count.
    """

    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.attempts = 0
        self._rng = rng if rng is not None else random.Random()
        self._prev = policy.initial_seconds  # last delay, for DECORRELATED

    def next_delay(self) -> float:
        """Count one attempt and return how long to wait before making it."""
        p = self.policy
        self.attempts += 1
        if p.jitter is JitterMode.DECORRELATED:
            # Clamp the memory in case the policy changed since the last call.
            prev = min(max(self._prev, p.initial_seconds), p.max_seconds)
            delay = min(p.max_seconds, self._rng.uniform(p.initial_seconds, prev * 3))
            self._prev = delay
        else:
            base = self._base(self.attempts)
            if p.jitter is JitterMode.NONE:
                delay = base
            elif p.jitter is JitterMode.FULL:
                delay = self._rng.uniform(0.0, base)
            else:  # EQUAL
                delay = base / 2 + self._rng.uniform(0.0, base / 2)
        # uniform() may round to just past its bound; the contract is a hard [0, max] range.
        return min(max(delay, 0.0), p.max_seconds)

    def _base(self, attempt: int) -> float:
        p = self.policy
        try:
            raw = p.initial_seconds * p.multiplier ** (attempt - 1)
        except OverflowError:  # a stream failing for weeks must not crash the supervisor
            raw = p.max_seconds
        return min(p.max_seconds, raw)

    def exhausted(self) -> bool:
        """True once ``max_attempts`` is set and used up: the caller should stop retrying."""
        m = self.policy.max_attempts
        return m is not None and self.attempts >= m

    def reset(self) -> None:
        """Forget past failures, e.g. after a successful connection proved stable."""
        self.attempts = 0
        self._prev = self.policy.initial_seconds

    def note_stable(self, stable_seconds: float) -> bool:
        """Reset once the stream has run ``reset_after_seconds`` without failing.

        A stream that connects and drops again after two seconds is still failing, so the counter
        only resets after real stability. Returns True only when this call actually reset a
        non-zero counter, so callers can log the event once instead of on every tick.
        """
        if stable_seconds < self.policy.reset_after_seconds or self.attempts == 0:
            return False
        self.reset()
        return True
