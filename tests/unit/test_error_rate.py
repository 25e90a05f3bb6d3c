"""ErrorRateDetector: sliding-window rates, hysteresis, bounds, on a fake clock."""

from __future__ import annotations

import pytest

from streamwarden.policy import ErrorRateDetector, RateChange
from tests.unit.fakes import FakeClock


def _detector(clock: FakeClock, **kwargs: float) -> ErrorRateDetector:
    return ErrorRateDetector(clock=clock, **kwargs)  # type: ignore[arg-type]


def test_rate_is_errors_per_minute_over_the_window() -> None:
    clock = FakeClock()
    det = _detector(clock, window_seconds=30.0)
    for _ in range(3):
        det.record("stream:cam1")
        clock.advance(5.0)
    assert det.rate("stream:cam1") == pytest.approx(6.0)  # 3 errors in 30 s
    assert det.rate("host:10.0.0.5") == 0.0
    clock.advance(16.0)  # the first error (at t=0) is now 31 s old
    assert det.rate("stream:cam1") == pytest.approx(4.0)


def test_raise_at_threshold_then_clear_with_hysteresis() -> None:
    clock = FakeClock()
    det = _detector(clock, window_seconds=60.0, raise_per_minute=6.0, clear_per_minute=2.0)
    for _ in range(5):
        det.record("stream:cam1")
    assert det.update() == []
    det.record("stream:cam1")
    assert det.update() == [RateChange("stream:cam1", "raised", 6.0, clock.now)]
    assert det.active() == {"stream:cam1": 6.0}
    assert det.update() == []  # reported once
    # Rate falls to 3/min: between the thresholds, stays raised.
    clock.advance(30.0)
    for _ in range(3):
        det.record("stream:cam1")
    clock.advance(31.0)
    assert det.rate("stream:cam1") == pytest.approx(3.0)
    assert det.update() == []
    assert "stream:cam1" in det.active()
    # Falls to 2/min: clears.
    det.record("stream:cam1")
    clock.advance(30.0)
    assert det.rate("stream:cam1") == pytest.approx(1.0)
    (change,) = det.update()
    assert (change.key, change.kind, change.rate) == ("stream:cam1", "cleared", 1.0)
    assert det.active() == {}


def test_hovering_at_the_raise_threshold_does_not_flap() -> None:
    clock = FakeClock()
    det = _detector(clock, window_seconds=60.0, raise_per_minute=6.0, clear_per_minute=2.0)
    kinds: list[str] = []
    rates: set[float] = set()
    for i in range(600):  # an error every 10 or 14 s: the rate wobbles between 5 and 6 per minute
        det.record("k")
        kinds += [c.kind for c in det.update()]
        if i >= 10:
            rates.add(det.rate("k"))
        clock.advance(10.0 if i % 2 else 14.0)
    assert rates == {5.0, 6.0}
    assert kinds == ["raised"]


def test_keys_are_independent() -> None:
    clock = FakeClock()
    det = _detector(clock)
    for _ in range(6):
        det.record("stream:a")
        det.record("host:h")
    det.record("stream:b")
    raised = {c.key for c in det.update()}
    assert raised == {"stream:a", "host:h"}
    assert set(det.active()) == {"host:h", "stream:a"}


def test_idle_keys_are_dropped_and_forget_removes() -> None:
    clock = FakeClock()
    det = _detector(clock)
    det.record("a")
    for _ in range(6):
        det.record("b")
    det.update()
    assert len(det) == 2
    clock.advance(61.0)
    kinds = [(c.key, c.kind) for c in det.update()]
    assert kinds == [("b", "cleared")]
    assert len(det) == 0
    for _ in range(6):
        det.record("c")
    det.update()
    det.forget("c")
    assert det.active() == {}
    assert det.update() == []
    assert len(det) == 0


def test_events_per_key_are_bounded_and_rate_saturates() -> None:
    clock = FakeClock()
    det = _detector(clock, window_seconds=60.0, raise_per_minute=6.0, max_events_per_key=10)
    for _ in range(1000):
        det.record("k")
    assert det.rate("k") == pytest.approx(10.0)
    assert len(det._events["k"]) == 10


def test_default_event_cap_leaves_room_above_the_threshold() -> None:
    det = ErrorRateDetector(window_seconds=120.0, raise_per_minute=6.0)
    assert det.max_events_per_key == 48  # 4 x the 12 errors that reach the threshold


def test_keys_are_bounded_and_an_evicted_alarm_is_cleared() -> None:
    clock = FakeClock()
    det = _detector(clock, max_keys=3)
    for _ in range(6):
        det.record("loud")
    det.update()
    clock.advance(1.0)
    det.record("a")
    det.record("b")
    det.record("loud")  # now the most recent: "a" is the least recently recorded
    det.record("c")
    assert len(det) == 3
    assert "a" not in det._events
    det.record("d")  # evicts "b"
    det.record("e")  # evicts "loud", which is raised: reported as cleared
    assert len(det) == 3
    assert [(c.key, c.kind) for c in det.update()] == [("loud", "cleared")]
    assert det.active() == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_seconds": 0.0},
        {"raise_per_minute": 0.0},
        {"clear_per_minute": 6.0},
        {"clear_per_minute": -1.0},
        {"max_events_per_key": 5},
        {"max_keys": 0},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ErrorRateDetector(**kwargs)  # type: ignore[arg-type]
