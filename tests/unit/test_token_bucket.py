"""TokenBucket: burst, refill rate, ceiling, wait time and thread safety."""

from __future__ import annotations

import threading

import pytest

from streamwarden.policy import TokenBucket
from tests.unit.fakes import FakeClock


def test_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate_per_second=2.0, burst=5, clock=FakeClock())
    assert [bucket.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.tokens == 0.0


def test_refills_at_the_configured_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=2.0, burst=5, clock=clock)
    for _ in range(5):
        bucket.try_acquire()
    clock.advance(0.25)
    assert bucket.tokens == pytest.approx(0.5)
    assert bucket.try_acquire() is False
    clock.advance(0.25)
    assert bucket.try_acquire() is True
    assert bucket.try_acquire() is False
    clock.advance(1.0)  # two more tokens
    assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]


def test_never_exceeds_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=10.0, burst=3, clock=clock)
    clock.advance(3600.0)
    assert bucket.tokens == 3.0
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_seconds_until_available() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=4.0, burst=1, clock=clock)
    assert bucket.seconds_until_available() == 0.0
    assert bucket.try_acquire() is True
    assert bucket.seconds_until_available() == pytest.approx(0.25)
    clock.advance(0.1)
    assert bucket.seconds_until_available() == pytest.approx(0.15)
    clock.advance(0.15)
    assert bucket.seconds_until_available() == 0.0
    assert bucket.try_acquire() is True


def test_refill_in_many_small_steps_is_not_lost_to_rounding() -> None:
    # Summing 100 clock deltas of 0.01 from 7.3 yields 0.99999999999998: without a tolerance the
    # token that is due would be refused.
    clock = FakeClock(start=7.3)
    bucket = TokenBucket(rate_per_second=1.0, burst=1, clock=clock)
    bucket.try_acquire()
    for _ in range(100):
        clock.advance(0.01)
        bucket.tokens  # noqa: B018 - each read refills in a small step
    assert bucket.seconds_until_available() == 0.0
    assert bucket.try_acquire() is True


def test_clock_stepping_back_does_not_remove_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_second=1.0, burst=2, clock=clock)
    bucket.try_acquire()
    clock.advance(-5.0)
    assert bucket.tokens == 1.0


def test_concurrent_acquires_never_oversubscribe() -> None:
    bucket = TokenBucket(rate_per_second=0.001, burst=50, clock=FakeClock())  # frozen clock: no refill
    granted = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        mine = sum(bucket.try_acquire() for _ in range(100))
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 50


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_invalid_arguments_are_rejected(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate_per_second=rate, burst=burst, clock=FakeClock())
