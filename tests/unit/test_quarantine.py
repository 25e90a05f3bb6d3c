"""Quarantine: sliding trip window, automatic expiry and operator release."""

from __future__ import annotations

import pytest

from streamwarden.policy import Quarantine, QuarantinePolicy
from tests.unit.fakes import FakeClock

POLICY = QuarantinePolicy(trips=3, window_seconds=600.0, quarantine_seconds=1800.0)


def test_enters_quarantine_on_the_nth_trip_within_window() -> None:
    clock = FakeClock()
    q = Quarantine(POLICY, clock)
    assert q.record_trip() is False
    clock.advance(200.0)
    assert q.record_trip() is False
    assert q.active is False
    clock.advance(200.0)
    assert q.record_trip() is True
    assert q.active is True
    assert q.seconds_remaining() == pytest.approx(1800.0)


def test_trips_outside_the_window_do_not_count() -> None:
    clock = FakeClock()
    q = Quarantine(POLICY, clock)
    q.record_trip()
    clock.advance(400.0)
    q.record_trip()
    clock.advance(201.0)  # the first trip is now 601 s old
    assert q.record_trip() is False
    assert q.active is False
    clock.advance(1.0)
    assert q.record_trip() is True  # three trips within 600 s: at 400, 601, 602


def test_trip_exactly_at_window_edge_counts() -> None:
    clock = FakeClock()
    q = Quarantine(POLICY, clock)
    q.record_trip()
    q.record_trip()
    clock.advance(600.0)
    assert q.record_trip() is True


def test_quarantine_expires_by_itself() -> None:
    clock = FakeClock()
    q = Quarantine(POLICY, clock)
    for _ in range(3):
        q.record_trip()
    q.reason = "3 breaker trips in 10 min"
    clock.advance(1799.0)
    assert q.active is True
    assert q.seconds_remaining() == pytest.approx(1.0)
    assert q.reason == "3 breaker trips in 10 min"
    clock.advance(1.0)
    assert q.active is False
    assert q.seconds_remaining() == 0.0
    assert q.reason is None


def test_after_expiry_a_full_set_of_new_trips_is_needed() -> None:
    clock = FakeClock()
    q = Quarantine(POLICY, clock)
    for _ in range(3):
        q.record_trip()
    clock.advance(1800.0)
    assert q.record_trip() is False
    assert q.record_trip() is False
    assert q.record_trip() is True


def test_trips_while_quarantined_are_not_new_quarantines() -> None:
    clock = FakeClock()
    q = Quarantine(POLICY, clock)
    for _ in range(3):
        q.record_trip()
    clock.advance(100.0)
    assert q.record_trip() is False
    assert q.seconds_remaining() == pytest.approx(1700.0)  # not extended


def test_release_clears_quarantine_history_and_reason() -> None:
    clock = FakeClock()
    q = Quarantine(POLICY, clock)
    for _ in range(3):
        q.record_trip()
    q.reason = "camera unreachable"
    q.release()
    assert q.active is False
    assert q.seconds_remaining() == 0.0
    assert q.reason is None
    assert q.record_trip() is False
    assert q.record_trip() is False  # history was cleared, so only two trips are known


def test_release_clears_partial_history() -> None:
    clock = FakeClock()
    q = Quarantine(POLICY, clock)
    q.record_trip()
    q.record_trip()
    q.release()
    assert q.record_trip() is False


def test_not_active_initially() -> None:
    q = Quarantine(POLICY, FakeClock())
    assert q.active is False
    assert q.seconds_remaining() == 0.0
    assert q.reason is None


def test_policy_swap_uses_new_threshold() -> None:
    clock = FakeClock()
    q = Quarantine(POLICY, clock)
    q.policy = QuarantinePolicy(trips=1, window_seconds=60.0, quarantine_seconds=5.0)
    assert q.record_trip() is True
    assert q.seconds_remaining() == pytest.approx(5.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"trips": 0}, {"window_seconds": 0.0}, {"quarantine_seconds": -1.0}],
)
def test_invalid_policy_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        QuarantinePolicy(**kwargs)  # type: ignore[arg-type]
