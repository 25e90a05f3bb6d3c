"""RTP transport stats from a real rtspsrc, over UDP through the impairment relay and over TCP.

The test camera serves ~80 RTP packets/s (320x240 H.264 at 1 Mbit/s). Thresholds are generous
(loss > 3 % with 10 % dropped) so two busy cores cannot make these flaky.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from streamwarden.policy import DegradationDetector, DegradationThresholds
from streamwarden.testing.udprelay import UdpRelay
from tests.helpers import wait_until

if TYPE_CHECKING:
    from streamwarden.media.rtpstats import RtpStats
    from streamwarden.media.rtspsource import RtspSourceBin
    from tests.conftest import CameraFactory

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def ingest(url: str, protocols: str) -> Iterator[Callable[[], RtpStats | None]]:
    """rtspsrc (via RtspSourceBin) ! fakesink on a loop thread; yields its ``transport_stats``."""
    from streamwarden.media.gst import Gst
    from streamwarden.media.loop import LoopThread
    from streamwarden.media.rtspsource import RtspSourceBin

    loop = LoopThread("rtpstats-test")
    loop.start()

    def build() -> tuple[Gst.Pipeline, RtspSourceBin]:
        pipeline = Gst.Pipeline.new("rtpstats")
        source = RtspSourceBin(url, schedule=loop.schedule, protocols=protocols, name="source")
        sink = Gst.ElementFactory.make("fakesink", None)
        assert sink is not None
        pipeline.add(source)
        pipeline.add(sink)
        assert source.link(sink)
        assert pipeline.set_state(Gst.State.PLAYING) != Gst.StateChangeReturn.FAILURE
        return pipeline, source

    pipeline, source = loop.call(build).result(10)
    try:
        # The loop thread, as the engine would call it once a second.
        yield lambda: loop.call(source.transport_stats).result(5)
    finally:
        loop.call(lambda: pipeline.set_state(Gst.State.NULL)).result(10)
        loop.stop()


def test_udp_through_relay_loss_and_jitter_degrade_then_clear(gst_init: None, camera: CameraFactory) -> None:
    cam = camera()
    with UdpRelay(("127.0.0.1", cam.port), seed=7) as relay, ingest(relay.url(cam.url()), "udp") as stats:
        detector = DegradationDetector(
            DegradationThresholds(
                max_loss_percent=3.0, window_seconds=3.0, clear_after_seconds=1.0, min_packets=40
            ),
            time.monotonic,
        )
        latest: list[RtpStats] = []

        def feed() -> RtpStats | None:
            current = stats()
            if current is not None:
                latest.append(current)
                detector.update(current.as_dict())
            return current

        # Clean link: packets flow through the relay, nothing lost, not degraded.
        wait_until(lambda: (s := feed()) is not None and s.packets_received >= 150, 20, interval=0.2)
        clean = latest[-1]
        assert relay.stats().setups == 1 and relay.stats().rtp_forwarded >= clean.packets_received
        assert clean.senders == 1 and clean.packets_lost <= 1 and clean.jitterbuffer_lost == 0
        assert clean.loss_percent < 1.0
        assert not detector.degraded, detector.reasons

        # 10 % loss and 20 +- 15 ms of jitter: loss and jitter show, the detector degrades.
        relay.set_impairment(drop=0.10, delay=0.02, jitter=0.015)
        wait_until(lambda: feed() is not None and detector.degraded, 20, interval=0.2)
        assert any(r.startswith("packet loss ") for r in detector.reasons), detector.reasons
        wait_until(lambda: (s := feed()) is not None and s.jitter_ms > 3.0, 10, interval=0.2)
        impaired = latest[-1]
        expected = impaired.packets_expected - clean.packets_expected
        lost = impaired.packets_lost - clean.packets_lost
        assert expected > 0 and 100 * lost / expected > 3.0, (clean, impaired)
        assert impaired.jitter_ms > clean.jitter_ms
        assert impaired.jitterbuffer_lost is not None and impaired.jitterbuffer_lost > 0

        # A clean link again: the burst leaves the window and the verdict clears.
        relay.set_impairment()
        wait_until(lambda: feed() is not None and not detector.degraded, 20, interval=0.2)
        assert detector.window_figures()["loss_percent"] is not None
        assert relay.stats().rtp_dropped > 0


def test_tcp_interleaved_has_stats_with_no_loss(gst_init: None, camera: CameraFactory) -> None:
    cam = camera()
    with ingest(cam.url(), "tcp") as stats:
        wait_until(lambda: (s := stats()) is not None and s.packets_received >= 100, 20, interval=0.2)
        first = stats()
        assert first is not None
        wait_until(lambda: (s := stats()) is not None and s.packets_received > first.packets_received, 5)
        last = stats()
        assert last is not None
        assert (last.sessions, last.senders, last.packets_lost, last.jitterbuffer_lost) == (1, 1, 0, 0)
        assert last.jitterbuffer_pushed is not None and last.jitterbuffer_pushed > 0
        assert last.octets_received > 0 and last.rtt_ms is None  # receive-only: no RTCP round trip
        assert set(last.as_dict()) >= {"packets_received", "packets_lost", "jitter_ms", "rtt_ms"}


def test_no_stats_before_setup(gst_init: None) -> None:
    from streamwarden.media.rtpstats import read_rtp_stats
    from streamwarden.media.rtspsource import RtspSourceBin

    source = RtspSourceBin("rtsp://127.0.0.1:1/none", schedule=lambda func: None)
    assert source.transport_stats() is None
    assert read_rtp_stats(source.rtspsrc) is None
