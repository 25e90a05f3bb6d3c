"""CircuitBreaker: every state transition, hold escalation and counters, driven by a fake clock."""

from __future__ import annotations

import pytest

from streamwarden.policy import BreakerPolicy, BreakerState, CircuitBreaker
from tests.unit.fakes import FakeClock

POLICY = BreakerPolicy(failure_threshold=3, open_seconds=10.0, open_multiplier=2.0, max_open_seconds=35.0)


def _tripped(clock: FakeClock, policy: BreakerPolicy = POLICY) -> CircuitBreaker:
    breaker = CircuitBreaker(policy, clock)
    for _ in range(policy.failure_threshold):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_starts_closed_and_allows_attempts() -> None:
    breaker = CircuitBreaker(POLICY, FakeClock())
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow_attempt() is True
    assert breaker.allow_attempt() is True
    assert breaker.consecutive_failures == 0
    assert breaker.trips == 0
    assert breaker.current_hold_seconds == 10.0
    assert breaker.seconds_until_half_open() == 0.0


def test_opens_exactly_at_threshold() -> None:
    breaker = CircuitBreaker(POLICY, FakeClock())
    tripped, states = [], []
    for _ in range(3):
        tripped.append(breaker.record_failure())
        states.append(breaker.state)
    assert tripped == [False, False, True]
    assert states == [BreakerState.CLOSED, BreakerState.CLOSED, BreakerState.OPEN]
    assert breaker.consecutive_failures == 3
    assert breaker.trips == 1


def test_success_in_closed_resets_the_count() -> None:
    breaker = CircuitBreaker(POLICY, FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    assert breaker.record_failure() is False
    assert breaker.record_failure() is False
    assert breaker.state is BreakerState.CLOSED


def test_open_refuses_attempts_until_hold_passed() -> None:
    clock = FakeClock()
    breaker = _tripped(clock)
    assert breaker.allow_attempt() is False
    assert breaker.seconds_until_half_open() == pytest.approx(10.0)
    clock.advance(9.9)
    assert breaker.allow_attempt() is False
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_half_open() == pytest.approx(0.1)


def test_open_becomes_half_open_after_hold_on_state_read() -> None:
    clock = FakeClock()
    breaker = _tripped(clock)
    clock.advance(10.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.seconds_until_half_open() == 0.0


def test_half_open_grants_exactly_one_trial() -> None:
    clock = FakeClock()
    breaker = _tripped(clock)
    clock.advance(10.0)
    assert breaker.allow_attempt() is True
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow_attempt() is False
    clock.advance(100.0)  # time alone does not grant another trial
    assert breaker.allow_attempt() is False


def test_half_open_success_closes_and_restores_hold() -> None:
    clock = FakeClock()
    breaker = _tripped(clock)
    clock.advance(10.0)
    assert breaker.allow_attempt() is True
    assert breaker.record_failure() is True  # trial failed: hold 20
    clock.advance(20.0)
    assert breaker.allow_attempt() is True
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.current_hold_seconds == 10.0
    assert breaker.allow_attempt() is True
    assert breaker.trips == 2


def test_half_open_failure_reopens_with_longer_hold() -> None:
    clock = FakeClock()
    breaker = _tripped(clock)
    clock.advance(10.0)
    assert breaker.allow_attempt() is True
    assert breaker.record_failure() is True
    assert breaker.state is BreakerState.OPEN
    assert breaker.current_hold_seconds == 20.0
    assert breaker.trips == 2
    clock.advance(19.0)
    assert breaker.allow_attempt() is False
    clock.advance(1.0)
    assert breaker.allow_attempt() is True


def test_hold_escalation_is_capped() -> None:
    clock = FakeClock()
    breaker = _tripped(clock)
    holds = []
    for _ in range(5):
        clock.advance(breaker.current_hold_seconds)
        assert breaker.allow_attempt() is True
        assert breaker.record_failure() is True
        holds.append(breaker.current_hold_seconds)
    assert holds == [20.0, 35.0, 35.0, 35.0, 35.0]
    assert breaker.trips == 6


def test_failure_while_open_does_not_retrip_or_extend() -> None:
    clock = FakeClock()
    breaker = _tripped(clock)
    clock.advance(5.0)
    assert breaker.record_failure() is False  # late failure from an attempt made before the trip
    assert breaker.trips == 1
    assert breaker.current_hold_seconds == 10.0
    assert breaker.seconds_until_half_open() == pytest.approx(5.0)


def test_reset_closes_but_keeps_trip_total() -> None:
    clock = FakeClock()
    breaker = _tripped(clock)
    clock.advance(10.0)
    breaker.allow_attempt()
    breaker.record_failure()
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.current_hold_seconds == 10.0
    assert breaker.allow_attempt() is True
    assert breaker.trips == 2


def test_policy_swap_applies_new_threshold_and_caps_hold() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(POLICY, clock)
    breaker.policy = BreakerPolicy(failure_threshold=1, open_seconds=4.0, max_open_seconds=8.0)
    assert breaker.current_hold_seconds == 4.0
    assert breaker.record_failure() is True
    assert breaker.seconds_until_half_open() == pytest.approx(4.0)
    clock.advance(4.0)
    breaker.allow_attempt()
    breaker.record_failure()
    assert breaker.current_hold_seconds == 8.0
    breaker.policy = BreakerPolicy(failure_threshold=1, open_seconds=1.0, max_open_seconds=3.0)
    assert breaker.current_hold_seconds == 3.0  # still open, but never beyond the new cap
    assert breaker.policy.max_open_seconds == 3.0


def test_state_values_are_strings() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"open_seconds": -1.0},
        {"open_multiplier": 0.5},
        {"open_seconds": 10.0, "max_open_seconds": 5.0},
    ],
)
def test_invalid_policy_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]
