"""DegradationDetector: windowed rates from cumulative counters, hysteresis, resets; fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from streamwarden.policy import DegradationChange, DegradationDetector, DegradationThresholds
from tests.unit.fakes import FakeClock

THRESHOLDS = DegradationThresholds(window_seconds=10.0, clear_after_seconds=5.0, min_packets=50)


@dataclass
class Link:
    """Cumulative counters of a fake RTP stream at 100 packets/s, fed to a detector each second."""

    clock: FakeClock
    detector: DegradationDetector
    received: int = 0
    lost: int = 0
    late: int = 0
    jitter_ms: float = 1.0
    rtt_ms: float | None = None

    def stats(self) -> dict[str, float | None]:
        return {
            "packets_received": self.received,
            "packets_lost": self.lost,
            "packets_late": self.late,
            "jitter_ms": self.jitter_ms,
            "rtt_ms": self.rtt_ms,
        }

    def tick(self, seconds: int = 1, *, loss: float = 0.0, late: float = 0.0) -> list[DegradationChange]:
        changes = []
        for _ in range(seconds):
            self.clock.advance(1.0)
            lost = round(100 * loss)
            self.received += 100 - lost
            self.lost += lost
            self.late += round(100 * late)
            change = self.detector.update(self.stats())
            if change is not None:
                changes.append(change)
        return changes


def _link(
    thresholds: DegradationThresholds = THRESHOLDS, jitter_ms: float = 1.0, rtt_ms: float | None = None
) -> Link:
    clock = FakeClock()
    link = Link(clock, DegradationDetector(thresholds, clock), jitter_ms=jitter_ms, rtt_ms=rtt_ms)
    link.detector.update(link.stats())  # baseline
    return link


def test_clean_stream_is_not_degraded_and_figures_are_windowed() -> None:
    link = _link()
    assert link.tick(20) == []
    assert not link.detector.degraded and link.detector.reasons == []
    figures = link.detector.window_figures()
    assert figures == {"loss_percent": 0.0, "jitter_ms": 1.0, "late_percent": 0.0, "rtt_ms": None}


def test_loss_degrades_with_a_readable_reason_and_clears_after_the_burst_and_hold() -> None:
    link = _link()
    link.tick(10)
    changes = link.tick(3, loss=0.10)
    assert len(changes) == 1 and changes[0].degraded
    assert changes[0].reasons[0].startswith("packet loss ") and changes[0].reasons[0].endswith("% > 2%")
    assert link.detector.degraded and link.detector.reasons == list(changes[0].reasons)
    # The burst stays in the 10 s window for a while, then 5 s below thresholds are needed.
    assert link.tick(9) == []
    assert link.detector.degraded
    cleared = link.tick(10)
    assert len(cleared) == 1 and not cleared[0].degraded and cleared[0].reasons == ()
    assert not link.detector.degraded and link.detector.reasons == []
    # After the burst: below 2 % once part of it left the 10 s window, then the 5 s hold.
    assert 5.0 + 5.0 <= cleared[0].at - (1000.0 + 13) <= 10.0 + 5.0


def test_exact_reason_text() -> None:
    link = _link(DegradationThresholds(window_seconds=5, min_packets=10))
    changes = link.tick(5, loss=0.098)
    assert changes and changes[0].reasons == ("packet loss 10.0% > 2%",)
    link2 = _link(DegradationThresholds(max_jitter_ms=50, max_rtt_ms=200), jitter_ms=62.34, rtt_ms=250.0)
    link2.tick(1)
    assert link2.detector.reasons == ["jitter 62.3 ms > 50 ms", "round-trip time 250 ms > 200 ms"]


def test_a_burst_shorter_than_needed_does_not_degrade_and_cumulative_totals_do_not_matter() -> None:
    link = _link()
    link.tick(30)
    link.lost += 5  # 5 lost out of ~1000 in the window: 0.5 %
    assert link.tick(1) == []
    # Lifetime loss after a long degraded phase no longer counts once it left the window.
    link.tick(20, loss=0.5)
    assert link.detector.degraded
    link.tick(20)
    assert not link.detector.degraded
    assert link.lost / (link.lost + link.received) > 0.02  # the lifetime figure would still say so


def test_late_packets_and_jitter_and_rtt_thresholds() -> None:
    link = _link(DegradationThresholds(max_rtt_ms=100.0))
    changes = link.tick(3, late=0.05)
    assert changes and changes[0].reasons[0].startswith("late packets 5.0% > 2%")
    link = _link()
    link.jitter_ms = 80.0
    assert link.tick(1) == []  # a gauge is averaged over the window: one reading is not enough
    changes = link.tick(5)
    assert (
        changes and changes[0].reasons[0].startswith("jitter ") and changes[0].reasons[0].endswith(" > 50 ms")
    )
    link = _link(DegradationThresholds(max_rtt_ms=100.0), rtt_ms=150.0)
    link.tick(1)  # gauges count from the first reading on
    assert link.detector.degraded and link.detector.reasons == ["round-trip time 150 ms > 100 ms"]
    # max_rtt_ms=None (the default) ignores RTT altogether.
    link = _link()
    link.rtt_ms = 5000.0
    assert link.tick(3) == []
    assert link.detector.window_figures()["rtt_ms"] == 5000.0


def test_clearing_needs_the_whole_hold_below_thresholds() -> None:
    link = _link(DegradationThresholds(window_seconds=2, clear_after_seconds=5, min_packets=10), jitter_ms=90)
    link.tick(1)
    assert link.detector.degraded
    link.jitter_ms = 1.0
    link.tick(3)  # window clean after 2 s; the hold starts
    link.jitter_ms = 190.0
    link.tick(1)  # relapse (mean of 1 and 190 ms): the hold starts over
    assert link.detector.degraded
    link.jitter_ms = 1.0
    assert link.tick(6) == []
    assert link.detector.degraded
    assert [c.degraded for c in link.tick(2)] == [False]


def test_counter_reset_after_a_rebuild_is_a_fresh_start_not_a_negative_rate() -> None:
    link = _link()
    link.tick(10)
    link.received, link.lost = 0, 0  # pipeline rebuilt: counters start again
    assert link.tick(10) == []
    assert link.detector.resets == 1
    figures = link.detector.window_figures()
    assert figures["loss_percent"] == 0.0
    # Loss on the new pipeline is still seen.
    assert link.tick(3, loss=0.2)[0].degraded


def test_reset_counter_carries_loss_counted_since_the_rebuild() -> None:
    clock = FakeClock()
    detector = DegradationDetector(DegradationThresholds(min_packets=10), clock)
    detector.update({"packets_received": 5000, "packets_lost": 0})
    clock.advance(1)
    change = detector.update({"packets_received": 90, "packets_lost": 10})  # rebuilt, then 10 % loss
    assert change is not None and change.degraded
    assert detector.window_figures()["loss_percent"] == pytest.approx(10.0)


def test_lost_counter_stepping_back_is_summed_signed_not_a_reset() -> None:
    """RFC 3550 packets-lost falls when duplicates arrive; it is no pipeline rebuild."""
    clock = FakeClock()
    detector = DegradationDetector(DegradationThresholds(min_packets=10), clock)
    detector.update({"packets_received": 0, "packets_lost": 0})
    for received, lost in ((100, 5), (200, 3), (300, 6)):
        clock.advance(1)
        detector.update({"packets_received": received, "packets_lost": lost})
    assert detector.resets == 0
    assert detector.window_figures()["loss_percent"] == pytest.approx(100 * 6 / 306)


def test_jitter_buffer_loss_counts_when_it_is_worse_than_the_network_view() -> None:
    clock = FakeClock()
    detector = DegradationDetector(DegradationThresholds(min_packets=10), clock)
    keys = ("packets_received", "packets_lost", "jitterbuffer_pushed", "jitterbuffer_lost")
    detector.update(dict.fromkeys(keys, 0))
    clock.advance(1)
    # Duplicates hid the network loss (lost 0), but 8 of 100 packets never reached the decoder.
    change = detector.update(
        {"packets_received": 100, "packets_lost": 0, "jitterbuffer_pushed": 92, "jitterbuffer_lost": 8}
    )
    assert change is not None and change.reasons == ("packet loss 8.0% > 2%",)


def test_too_few_packets_or_missing_keys_are_not_judged() -> None:
    clock = FakeClock()
    detector = DegradationDetector(DegradationThresholds(min_packets=50), clock)
    detector.update({"packets_received": 0, "packets_lost": 0})
    clock.advance(1)
    assert detector.update({"packets_received": 5, "packets_lost": 5}) is None  # 50 % of 10: noise
    assert detector.window_figures()["loss_percent"] is None
    other = DegradationDetector(THRESHOLDS, clock)
    other.update({"jitter_ms": None})
    clock.advance(1)
    assert other.update({}) is None
    assert other.window_figures() == {
        "loss_percent": None,
        "jitter_ms": None,
        "late_percent": None,
        "rtt_ms": None,
    }


def test_no_traffic_clears_rather_than_keeping_an_old_verdict() -> None:
    link = _link(DegradationThresholds(window_seconds=3, clear_after_seconds=1, min_packets=10))
    link.tick(3, loss=0.3)
    assert link.detector.degraded
    for _ in range(6):  # a stalled stream: counters stop, jitter gauge gone
        link.clock.advance(1)
        link.detector.update({"packets_received": link.received, "packets_lost": link.lost})
    assert not link.detector.degraded


def test_detector_reset_forgets_everything() -> None:
    link = _link()
    link.tick(3, loss=0.5)
    assert link.detector.degraded
    link.detector.reset()
    assert not link.detector.degraded and link.detector.reasons == []
    assert link.detector.window_figures()["loss_percent"] is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_loss_percent": -1},
        {"window_seconds": 0},
        {"clear_after_seconds": -1},
        {"min_packets": 0},
        {"max_rtt_ms": float("nan")},
    ],
)
def test_thresholds_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DegradationThresholds(**kwargs)  # type: ignore[arg-type]


def test_defaults_match_the_documented_policy() -> None:
    t = DegradationThresholds()
    assert (t.max_loss_percent, t.max_jitter_ms, t.max_late_percent, t.max_rtt_ms) == (2.0, 50.0, 2.0, None)
    assert (t.window_seconds, t.clear_after_seconds) == (10.0, 5.0)
