"""Polled frame meter, media-quality verdicts, incident log and the load shedder (pure units)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from streamwarden.config import DegradedConfig, LimitsConfig
from streamwarden.health import FrameMeter, MediaQuality
from streamwarden.incidents import IncidentLog
from streamwarden.policy.correlation import Correlator, StreamKeys
from streamwarden.policy.error_rate import RateChange
from streamwarden.policy.pressure import ShedLevel, StreamLoad
from streamwarden.resources import ProcessSampler
from streamwarden.shedding import LoadShedder, limits_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- FrameMeter --------------------------------------------------------------------------------
def test_meter_counts_from_polls_and_reports_a_gap_only_after_a_stagnant_poll() -> None:
    clock = Clock()
    meter = FrameMeter(clock)
    meter.first_frame_seen()
    assert meter.first_frame_at == 100.0
    for frames in (7, 14, 21):  # 30 fps at 4 Hz: every poll sees new frames
        clock.now += 0.25
        meter.observe(frames, frames * 1000)
    assert meter.max_gap == 0.0 and meter.frames == 21 and meter.bytes == 21000
    clock.now += 0.25
    meter.observe(21, 21000)  # no new frame: at least 0.25 s without one
    clock.now += 0.25
    meter.observe(21, 21000)
    clock.now += 0.25
    meter.observe(25, 25000)
    assert meter.max_gap == pytest.approx(0.5)
    assert meter.last_frame_at == clock.now


def test_a_late_tick_that_still_sees_frames_is_not_a_gap() -> None:
    clock = Clock()
    meter = FrameMeter(clock)
    meter.observe(5, 500)
    clock.now += 0.9  # the loop was busy: the next poll is late, but frames kept coming
    meter.observe(32, 3200)
    assert meter.max_gap == 0.0


# -- MediaQuality --------------------------------------------------------------------------------
@dataclass
class Window:
    frames: int = 30
    timestamp_errors: int = 0
    corrupt_frames: int = 0
    discont_flags: int = 0
    nominal_fps: float | None = 30.0


def test_frame_rate_below_the_ratio_of_the_learned_nominal_degrades_after_warm_up() -> None:
    clock = Clock()
    quality = MediaQuality(clock=clock)
    quality.add_window(Window())
    config = DegradedConfig(min_fps_ratio=0.5, window_seconds=10)
    assert quality.reasons(config, fps=10.0, playing_for=5.0, configured_fps=None) == []  # warming up
    reasons = quality.reasons(config, fps=10.0, playing_for=20.0, configured_fps=None)
    assert reasons == ["frame rate 10.0 < 50% of nominal 30 fps"]
    assert quality.reasons(config, fps=29.0, playing_for=20.0, configured_fps=None) == []
    # A source that slows later does not lower its own yardstick.
    quality.add_window(Window(nominal_fps=5.0))
    assert quality.nominal_fps() == 30.0
    assert quality.nominal_fps(configured=25.0) == 25.0


def test_media_errors_in_the_last_minute_degrade_and_age_out() -> None:
    clock = Clock()
    quality = MediaQuality(clock=clock)
    config = DegradedConfig(max_media_errors_per_minute=3, min_fps_ratio=None)
    quality.add_window(Window(timestamp_errors=2, corrupt_frames=2))
    assert quality.reasons(config, 30.0, 60.0, None) == [
        "4 timestamp errors or corrupt frames in the last minute > 3"
    ]
    clock.now += 61
    assert quality.reasons(config, 30.0, 60.0, None) == []
    assert quality.as_dict()["timestamp_errors_total"] == 2


# -- IncidentLog ---------------------------------------------------------------------------------
def test_incident_log_keeps_one_record_per_shared_cause_and_closes_it() -> None:
    clock = Clock()
    correlator = Correlator(window_seconds=30, min_streams=3, close_hold_seconds=0, clock=clock)
    log = IncidentLog(wall=clock)
    for index in range(4):
        correlator.register(f"c{index}", StreamKeys(host="10.0.0.5"))
        correlator.record_failure(f"c{index}", "network")
    for change in correlator.analyze():
        log.correlation(change)
    [record] = log.open_incidents()
    assert record.kind == "host" and record.key == "10.0.0.5" and "4 streams" in record.summary
    for index in range(4):
        correlator.record_recovery(f"c{index}")
    clock.now += 1
    for change in correlator.analyze():
        log.correlation(change)
    assert log.open_incidents() == []
    assert log.all()[0]["closed_at"] is not None


def test_rate_alarms_open_and_clear_as_incidents() -> None:
    log = IncidentLog(wall=Clock())
    log.error_rate(RateChange("host:10.0.0.5", "raised", 12.0, 1.0))
    assert log.all()[0]["summary"] == "host 10.0.0.5: 12.0 errors per minute"
    log.error_rate(RateChange("host:10.0.0.5", "cleared", 1.0, 2.0))
    assert log.open_incidents() == [] and log.all()[0]["open"] is False


# -- LoadShedder ---------------------------------------------------------------------------------
class Target:
    def __init__(self, loads: list[StreamLoad]) -> None:
        self.loads = {load.id: load for load in loads}
        self.applied: list[tuple[str, ShedLevel]] = []

    def shed_loads(self) -> list[StreamLoad]:
        return list(self.loads.values())

    def apply_shed(self, stream_id: str, level: ShedLevel, reason: str | None) -> None:
        self.applied.append((stream_id, level))
        old = self.loads[stream_id]
        self.loads[stream_id] = StreamLoad(old.id, old.priority, old.serving, old.recording, level)


def test_shedder_applies_one_step_per_interval_lowest_priority_first_and_restores() -> None:
    clock = Clock()
    target = Target([StreamLoad("low", 0, True, True), StreamLoad("high", 9, True, True)])
    limits = LimitsConfig(max_memory_mb=1, check_interval_seconds=0.1, step_seconds=1)
    shedder = LoadShedder(limits, target, clock)
    for _ in range(6):
        clock.now += 1.0
        shedder.tick(streams=2)
    assert target.applied == [
        ("low", ShedLevel.CLIENTS),
        ("low", ShedLevel.RECORDING),
        ("low", ShedLevel.PAUSED),
        ("high", ShedLevel.CLIENTS),
        ("high", ShedLevel.RECORDING),
        ("high", ShedLevel.PAUSED),
    ]
    assert shedder.describe()["under_pressure"] is True
    shedder.configure(LimitsConfig(max_memory_mb=10_000_000, check_interval_seconds=0.1, step_seconds=1))
    target.applied.clear()
    for _ in range(6):
        clock.now += 1.0
        shedder.tick(streams=2)
    assert [s for s, _ in target.applied] == ["high"] * 3 + ["low"] * 3
    assert target.applied[-1] == ("low", ShedLevel.NONE) and shedder.levels == {}


def test_admission_names_the_limit_and_tiny_memory_limits_stay_valid() -> None:
    shedder = LoadShedder(LimitsConfig(max_streams=2), Target([]), Clock())
    assert shedder.admit(streams=1, priority=0) is None
    assert shedder.admit(streams=2, priority=0) == "max_streams reached: 2 streams (limit 2)"
    assert limits_of(LimitsConfig(max_memory_mb=5e-324)).max_rss_bytes == 1


def test_process_sampler_reads_this_process() -> None:
    clock = Clock()
    sampler = ProcessSampler(clock)
    first = sampler.sample(streams=3)
    assert first.rss_bytes > 1_000_000 and first.threads >= 1 and first.open_fds >= 3 and first.streams == 3
    clock.now += 1.0
    assert sampler.sample(streams=3).cpu_percent >= 0.0
