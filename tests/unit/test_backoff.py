"""Backoff: delay bounds per jitter mode, growth, cap, and counter resets."""

from __future__ import annotations

import random
import statistics

import pytest

from streamwarden.policy import Backoff, BackoffPolicy, JitterMode


def _backoff(jitter: JitterMode, seed: int = 0, **kwargs: float | int | None) -> Backoff:
    return Backoff(BackoffPolicy(jitter=jitter, **kwargs), random.Random(seed))  # type: ignore[arg-type]


def test_none_grows_exponentially_then_caps() -> None:
    b = _backoff(JitterMode.NONE, initial_seconds=1.0, multiplier=2.0, max_seconds=60.0)
    delays = [b.next_delay() for _ in range(9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert b.attempts == 9


def test_non_integer_multiplier() -> None:
    b = _backoff(JitterMode.NONE, initial_seconds=0.5, multiplier=1.5, max_seconds=10.0)
    assert [b.next_delay() for _ in range(4)] == pytest.approx([0.5, 0.75, 1.125, 1.6875])


def test_cap_holds_for_huge_attempt_counts() -> None:
    # 2.0 ** 5000 overflows a float; a stream down for weeks must still get the cap, not a crash.
    b = _backoff(JitterMode.NONE, max_seconds=45.0)
    for _ in range(5000):
        delay = b.next_delay()
    assert delay == 45.0
    assert b.attempts == 5000


@pytest.mark.parametrize("mode", list(JitterMode))
def test_every_mode_stays_within_zero_and_max(mode: JitterMode) -> None:
    for seed in range(50):
        b = _backoff(mode, seed=seed, initial_seconds=0.5, multiplier=3.0, max_seconds=20.0)
        for _ in range(15):
            delay = b.next_delay()
            assert 0.0 <= delay <= 20.0


def test_full_jitter_is_within_zero_and_base() -> None:
    for seed in range(50):
        b = _backoff(JitterMode.FULL, seed=seed, initial_seconds=1.0, multiplier=2.0, max_seconds=30.0)
        for attempt in range(1, 10):
            base = min(30.0, 2.0 ** (attempt - 1))
            assert 0.0 <= b.next_delay() <= base


def test_full_jitter_mean_is_half_the_base() -> None:
    rng = random.Random(1234)
    b = Backoff(BackoffPolicy(initial_seconds=1.0, multiplier=2.0, max_seconds=60.0), rng)
    samples = []
    for _ in range(20_000):
        b.attempts = 3  # the next call is attempt 4: base = 8
        samples.append(b.next_delay())
    # Uniform(0, 8): mean 4, standard error ~0.016 for 20k samples; 0.1 is a ~6 sigma tolerance.
    assert statistics.fmean(samples) == pytest.approx(4.0, abs=0.1)
    assert min(samples) < 0.5  # it really spreads over the whole range ...
    assert max(samples) > 7.5  # ... not just around the mean


def test_equal_jitter_never_below_half_base() -> None:
    for seed in range(50):
        b = _backoff(JitterMode.EQUAL, seed=seed, initial_seconds=2.0, multiplier=2.0, max_seconds=50.0)
        for attempt in range(1, 10):
            base = min(50.0, 2.0 * 2.0 ** (attempt - 1))
            delay = b.next_delay()
            assert base / 2 <= delay <= base


def test_decorrelated_jitter_grows_from_previous_delay() -> None:
    for seed in range(50):
        b = _backoff(JitterMode.DECORRELATED, seed=seed, initial_seconds=1.0, max_seconds=30.0)
        prev = 1.0
        for _ in range(20):
            delay = b.next_delay()
            assert 1.0 <= delay <= min(30.0, prev * 3)
            prev = delay


def test_decorrelated_reaches_the_cap_eventually() -> None:
    b = _backoff(JitterMode.DECORRELATED, seed=5, initial_seconds=1.0, max_seconds=10.0)
    assert max(b.next_delay() for _ in range(200)) == 10.0


def test_same_seed_gives_same_sequence() -> None:
    a = _backoff(JitterMode.FULL, seed=42)
    b = _backoff(JitterMode.FULL, seed=42)
    assert [a.next_delay() for _ in range(10)] == [b.next_delay() for _ in range(10)]


def test_default_rng_is_used_when_none_given() -> None:
    b = Backoff(BackoffPolicy(max_seconds=5.0))
    assert all(0.0 <= b.next_delay() <= 5.0 for _ in range(100))


def test_reset_starts_over() -> None:
    b = _backoff(JitterMode.NONE)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.attempts == 0
    assert b.next_delay() == 1.0


def test_reset_restarts_decorrelated_memory() -> None:
    b = _backoff(JitterMode.DECORRELATED, seed=3, initial_seconds=1.0, max_seconds=1000.0)
    for _ in range(30):
        b.next_delay()
    b.reset()
    assert 1.0 <= b.next_delay() <= 3.0


def test_note_stable_resets_only_after_enough_stable_time() -> None:
    b = _backoff(JitterMode.NONE, reset_after_seconds=30.0)
    for _ in range(4):
        b.next_delay()
    assert b.note_stable(29.9) is False
    assert b.attempts == 4
    assert b.note_stable(30.0) is True
    assert b.attempts == 0
    assert b.next_delay() == 1.0


def test_note_stable_reports_false_when_nothing_to_reset() -> None:
    b = _backoff(JitterMode.NONE, reset_after_seconds=30.0)
    assert b.note_stable(100.0) is False
    assert b.attempts == 0


def test_max_attempts_exhausts() -> None:
    b = _backoff(JitterMode.NONE, max_attempts=3)
    seen = []
    for _ in range(3):
        seen.append(b.exhausted())
        b.next_delay()
    assert seen == [False, False, False]
    assert b.exhausted() is True
    b.reset()
    assert b.exhausted() is False


def test_unlimited_attempts_never_exhaust() -> None:
    b = _backoff(JitterMode.NONE, max_attempts=None)
    for _ in range(1000):
        b.next_delay()
    assert b.exhausted() is False


def test_policy_swap_keeps_attempt_count() -> None:
    b = _backoff(JitterMode.NONE, initial_seconds=1.0, multiplier=2.0, max_seconds=60.0)
    for _ in range(3):
        b.next_delay()
    b.policy = BackoffPolicy(initial_seconds=1.0, multiplier=2.0, max_seconds=5.0, jitter=JitterMode.NONE)
    assert b.attempts == 3
    assert b.next_delay() == 5.0  # attempt 4 would be 8 s, the new cap wins
    b.policy = BackoffPolicy(initial_seconds=1.0, multiplier=2.0, max_seconds=60.0, jitter=JitterMode.NONE)
    assert b.next_delay() == 16.0  # attempt 5 under the new policy
    b.policy = BackoffPolicy(max_attempts=5)
    assert b.exhausted() is True


def test_policy_swap_clamps_decorrelated_memory() -> None:
    b = _backoff(JitterMode.DECORRELATED, seed=9, initial_seconds=1.0, max_seconds=600.0)
    for _ in range(50):
        b.next_delay()
    b.policy = BackoffPolicy(initial_seconds=1.0, max_seconds=2.0, jitter=JitterMode.DECORRELATED)
    assert all(1.0 <= b.next_delay() <= 2.0 for _ in range(20))


def test_jitter_accepts_config_strings() -> None:
    policy = BackoffPolicy(jitter="equal")  # type: ignore[arg-type]
    assert policy.jitter is JitterMode.EQUAL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_seconds": 0.0},
        {"multiplier": 0.5},
        {"max_seconds": 0.0},
        {"max_attempts": 0},
        {"reset_after_seconds": -1.0},
        {"jitter": "wobbly"},
    ],
)
def test_invalid_policy_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]
