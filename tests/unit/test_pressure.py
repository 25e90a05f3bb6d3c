"""ShedPlanner: shedding order, exact reverse on relief, hysteresis, pacing and the priority property."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import pytest

from streamwarden.policy import ResourceLimits, ResourceSample, ShedAction, ShedLevel, ShedPlanner, StreamLoad
from tests.unit.fakes import FakeClock

MIB = 1024 * 1024
LIMITS = ResourceLimits(max_rss_bytes=500 * MIB, max_streams=10)
OVER = ResourceSample(rss_bytes=612 * MIB, streams=6)
BAND = ResourceSample(rss_bytes=470 * MIB, streams=6)  # below the limit, above 90 % of it
CLEAR = ResourceSample(rss_bytes=400 * MIB, streams=6)
N, C, R, P = ShedLevel.NONE, ShedLevel.CLIENTS, ShedLevel.RECORDING, ShedLevel.PAUSED


def _streams() -> dict[str, StreamLoad]:
    loads = [
        StreamLoad("low-a", priority=0, serving=True, recording=True),
        StreamLoad("low-b", priority=0, recording=True),
        StreamLoad("low-c", priority=0),
        StreamLoad("mid-a", priority=5, serving=True, recording=True),
        StreamLoad("mid-b", priority=5, serving=True),
        StreamLoad("high", priority=10, serving=True, recording=True),
    ]
    return {s.id: s for s in loads}


def _apply(streams: dict[str, StreamLoad], actions: Sequence[ShedAction]) -> None:
    for action in actions:
        assert streams[action.stream_id].level == action.from_level
        streams[action.stream_id] = dataclasses.replace(streams[action.stream_id], level=action.to_level)


def _steps(
    planner: ShedPlanner, clock: FakeClock, streams: dict[str, StreamLoad], sample: ResourceSample
) -> list[set[tuple[str, ShedLevel, ShedLevel]]]:
    steps = []
    for _ in range(20):
        actions = planner.plan(sample, list(streams.values()))
        if not actions:
            break
        steps.append({(a.stream_id, a.from_level, a.to_level) for a in actions})
        _apply(streams, actions)
        clock.advance(planner.step_interval_seconds)
    return steps


def test_pressure_lists_exceeded_limits_readably() -> None:
    planner = ShedPlanner(
        ResourceLimits(max_rss_bytes=500 * MIB, max_cpu_percent=80, max_open_fds=1024, max_threads=200)
    )
    sample = ResourceSample(rss_bytes=612 * MIB, cpu_percent=93.4, open_fds=1200, threads=150)
    assert planner.pressure(sample) == [
        "rss 612 MiB > limit 500 MiB",
        "cpu 93% > limit 80%",
        "open fds 1200 > limit 1024",
    ]
    assert planner.pressure(ResourceSample(rss_bytes=500 * MIB)) == []  # at the limit is not over it
    assert ShedPlanner(ResourceLimits()).pressure(sample) == []  # no limits, no pressure


def test_sheds_lowest_priority_first_level_by_level() -> None:
    clock = FakeClock()
    planner = ShedPlanner(LIMITS, step_interval_seconds=2.0, clock=clock)
    streams = _streams()
    steps = _steps(planner, clock, streams, OVER)
    assert steps == [
        {("low-a", N, C)},  # low-b does not serve, low-c neither serves nor records: wait
        {("low-a", C, R), ("low-b", N, R)},
        {("low-a", R, P), ("low-b", R, P), ("low-c", N, P)},
        {("mid-a", N, C), ("mid-b", N, C)},
        {("mid-a", C, R)},
        {("mid-a", R, P), ("mid-b", C, P)},
        {("high", N, C)},
        {("high", C, R)},
        {("high", R, P)},
    ]
    assert all(s.level is P for s in streams.values())
    clock.advance(10.0)
    assert planner.plan(OVER, list(streams.values())) == []  # nothing left to shed


def test_relief_restores_in_exactly_the_reverse_order() -> None:
    clock = FakeClock()
    planner = ShedPlanner(LIMITS, step_interval_seconds=2.0, clock=clock)
    streams = _streams()
    shed = _steps(planner, clock, streams, OVER)
    restored = _steps(planner, clock, streams, CLEAR)
    assert restored == [{(s, to, frm) for s, frm, to in step} for step in reversed(shed)]
    assert all(s.level is N for s in streams.values())


def test_partial_shedding_restores_the_same_steps() -> None:
    clock = FakeClock()
    planner = ShedPlanner(LIMITS, step_interval_seconds=1.0, clock=clock)
    streams = _streams()
    shed = []
    for _ in range(5):
        actions = planner.plan(OVER, list(streams.values()))
        shed.append({(a.stream_id, a.from_level, a.to_level) for a in actions})
        assert all(a.shedding and a.reason == "rss 612 MiB > limit 500 MiB" for a in actions)
        _apply(streams, actions)
        clock.advance(1.0)
    restored = _steps(planner, clock, streams, CLEAR)
    assert restored == [{(s, to, frm) for s, frm, to in step} for step in reversed(shed)]


def test_one_step_per_interval() -> None:
    clock = FakeClock()
    planner = ShedPlanner(LIMITS, step_interval_seconds=2.0, clock=clock)
    streams = _streams()
    _apply(streams, planner.plan(OVER, list(streams.values())))
    assert planner.plan(OVER, list(streams.values())) == []
    clock.advance(1.9)
    assert planner.plan(OVER, list(streams.values())) == []
    clock.advance(0.1)
    assert planner.plan(OVER, list(streams.values())) != []


def test_hysteresis_between_limit_and_clear_ratio() -> None:
    clock = FakeClock()
    planner = ShedPlanner(LIMITS, step_interval_seconds=0.0, clock=clock)
    streams = _streams()
    _apply(streams, planner.plan(OVER, list(streams.values())))
    assert planner.under_pressure
    for _ in range(5):  # below the limit but not below 90 % of it: neither shed nor restore
        assert planner.plan(BAND, list(streams.values())) == []
    assert planner.under_pressure
    assert planner.admit(BAND, 0) is not None
    actions = planner.plan(CLEAR, list(streams.values()))
    assert [(a.stream_id, a.to_level, a.reason) for a in actions] == [
        ("low-a", N, "resource pressure cleared")
    ]
    assert not planner.under_pressure
    assert planner.plan(BAND, list(streams.values())) == []  # cleared, nothing shed: quiet


def test_streams_added_during_pressure_are_shed_before_higher_ones() -> None:
    clock = FakeClock()
    planner = ShedPlanner(LIMITS, step_interval_seconds=0.0, clock=clock)
    streams = _streams()
    for _ in range(4):
        _apply(streams, planner.plan(OVER, list(streams.values())))
    assert streams["mid-a"].level is C
    streams["late-low"] = StreamLoad("late-low", priority=0, serving=True)
    actions = planner.plan(OVER, list(streams.values()))
    assert [(a.stream_id, a.to_level) for a in actions] == [("late-low", C)]


def test_admit() -> None:
    planner = ShedPlanner(LIMITS, clock=FakeClock())
    assert planner.admit(CLEAR, 0) is None
    reason = planner.admit(dataclasses.replace(CLEAR, streams=10), 3)
    assert reason == "max_streams reached: 10 streams (limit 10)"
    reason = planner.admit(OVER, 7)
    assert reason is not None
    assert "rss 612 MiB > limit 500 MiB" in reason and "priority 7" in reason


def test_never_sheds_above_a_running_lower_priority_randomized() -> None:
    rng = random.Random(20261124)
    clock = FakeClock()
    planner = ShedPlanner(
        ResourceLimits(max_rss_bytes=100, max_threads=100), step_interval_seconds=1.0, clock=clock
    )
    streams: dict[str, StreamLoad] = {}
    seen_shed = seen_restore = 0
    for tick in range(2000):
        if rng.random() < 0.05 and len(streams) < 40:  # streams come and go
            sid = f"s{tick}"
            streams[sid] = StreamLoad(sid, rng.randint(0, 4), rng.random() < 0.5, rng.random() < 0.5)
        if rng.random() < 0.02 and streams:
            del streams[rng.choice(sorted(streams))]
        sample = ResourceSample(rss_bytes=rng.choice([50, 95, 150]), threads=rng.choice([10, 95, 120]))
        before = dict(streams)
        actions = planner.plan(sample, list(before.values()))
        for action in actions:
            me = before[action.stream_id]
            if action.shedding:
                seen_shed += 1
                assert all(s.level is P for s in before.values() if s.priority < me.priority), action
            else:
                seen_restore += 1
                assert all(s.level is N for s in before.values() if s.priority > me.priority), action
        assert len({a.to_level for a in actions}) <= 1 or not actions[0].shedding
        _apply(streams, actions)
        clock.advance(rng.choice([0.5, 1.0, 2.0]))
    assert seen_shed > 50 and seen_restore > 50


@pytest.mark.parametrize(
    "kwargs",
    [{"max_rss_bytes": 0}, {"max_cpu_percent": -5.0}, {"clear_ratio": 0.0}, {"clear_ratio": 1.5}],
)
def test_invalid_limits_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ResourceLimits(**kwargs)  # type: ignore[arg-type]


def test_invalid_interval_is_rejected() -> None:
    with pytest.raises(ValueError):
        ShedPlanner(LIMITS, step_interval_seconds=-1.0)
