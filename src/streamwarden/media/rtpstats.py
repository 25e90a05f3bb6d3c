"""Transport-level (RTP/RTCP) counters of a running rtspsrc, read once a second for health.

Frame counts say *whether* video arrives; these say *how well* the network carries it: loss,
lateness and jitter show a degrading link before frames stop. Everything comes from the rtpbin
that rtspsrc creates at SETUP (a child element, factory ``rtpbin``; rtspsrc has no ``manager``
property, only a ``new-manager`` signal), read through public properties:

- each ``rtpsession``'s ``internal-session`` → ``sources`` → ``stats`` of every remote source
  that has sent RTP (``is-sender`` lapses when a sender pauses, so it is not used):
  ``packets-received``, ``octets-received``, ``packets-lost`` (RFC 3550: expected - received; it
  goes negative with duplicates, e.g. -1 on a clean stream, so it is clamped at 0), ``jitter``
  (RFC 3550 interarrival jitter in clock-rate units, converted to ms), ``bitrate`` and, if the
  sender's RTCP carries a report block about us, ``rb-round-trip`` (1/65536 s units);
- each ``rtpjitterbuffer``'s ``stats``: ``num-pushed``, ``num-lost`` (packets the buffer gave up
  waiting for), ``num-late`` (arrived after their slot was pushed), ``num-duplicates`` and
  ``avg-jitter`` (ns, the buffer's own arrival-jitter estimate; it tracked the RTP source's
  jitter to within 1 % in our runs). Under heavy reordering (jitter beyond the buffer's latency)
  the two loss views part: the network lost nothing, the buffer gave up on late packets.

Not available, honestly:

- RTCP round-trip time: a receive-only client sends no RTP, so the camera's sender reports carry
  no report block about it and ``rb-round-trip`` stays unset (``rtt_ms`` is None). It would
  appear only for a sender that also receives from us (a backchannel).
- Jitter-buffer underruns: rtpjitterbuffer 1.22 counts none. The nearest figure is
  ``jitterbuffer_lost`` (a slot whose deadline passed with no packet: a hole pushed downstream);
  a packet that arrives after that is ``packets_late``.

Works for UDP and TCP interleaved alike (rtspsrc feeds the same rtpbin). Reading takes each
element's object lock briefly and allocates a few small structures: cheap enough for every
stream once per second, from any thread (the engine's loop thread included). The counters are
cumulative for the life of the rtspsrc; a rebuilt pipeline starts again from zero. ``bitrate``
reads 0 for the first ~2 s of a session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from streamwarden.media.gst import Gst

__all__ = ["RtpStats", "read_rtp_stats"]

log = logging.getLogger(__name__)

_RESYNC_RETRIES = 5
_NTP_SHORT_UNITS_PER_MS = 65536 / 1000  # rb-round-trip is in 1/65536 s


@dataclass(frozen=True)
class RtpStats:
    """Cumulative RTP counters of one rtspsrc, summed over its sessions and remote senders.

    ``as_dict()`` is what ``policy.degradation.DegradationDetector.update`` takes. Gauges
    (``jitter_ms``, ``bitrate_bps``, ``jitterbuffer_jitter_ms``) are current values; the worst
    session's jitter is reported. Jitter-buffer fields are None when rtpbin runs without a
    jitterbuffer (a pass-through handed back by ``request-jitterbuffer``).
    """

    sessions: int
    senders: int
    packets_received: int
    octets_received: int
    packets_lost: int
    jitter_ms: float
    bitrate_bps: int
    rtt_ms: float | None
    jitterbuffer_pushed: int | None
    jitterbuffer_lost: int | None
    packets_late: int | None
    packets_duplicate: int | None
    jitterbuffer_jitter_ms: float | None

    @property
    def packets_expected(self) -> int:
        return self.packets_received + self.packets_lost

    @property
    def loss_percent(self) -> float:
        """Lifetime loss; a health judgement wants a window (policy.degradation)."""
        expected = self.packets_expected
        return 100.0 * self.packets_lost / expected if expected else 0.0

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def read_rtp_stats(rtspsrc: Gst.Element) -> RtpStats | None:
    """RTP/RTCP counters of ``rtspsrc`` now; None before SETUP (no rtpbin or no session yet)."""
    rtpbin = _find_rtpbin(rtspsrc)
    if rtpbin is None:
        return None
    sessions = 0
    senders = received = octets = lost = bitrate = 0
    jitter_ms = 0.0
    rtts: list[float] = []
    jb_found = False
    jb_pushed = jb_lost = jb_late = jb_dup = 0
    jb_jitter_ms = 0.0
    for element in _elements(rtpbin):
        factory = element.get_factory()
        kind = factory.get_name() if factory is not None else ""
        if kind == "rtpsession":
            session = element.get_property("internal-session")
            if session is None:
                continue
            sessions += 1
            for source in session.get_property("sources") or ():
                stats = source.get_property("stats")
                if stats is None or _flag(stats, "internal") or _int(stats, "packets-received") == 0:
                    continue  # our own SSRC, or a remote that sent no RTP (is-sender lapses: not used)
                senders += 1
                received += _int(stats, "packets-received")
                octets += _int(stats, "octets-received")
                lost += max(0, _int(stats, "packets-lost"))
                bitrate += _int(stats, "bitrate")
                clock_rate = _int(stats, "clock-rate", -1)
                if clock_rate > 0:
                    jitter_ms = max(jitter_ms, 1000.0 * _int(stats, "jitter") / clock_rate)
                if _flag(stats, "have-rb"):
                    round_trip = _int(stats, "rb-round-trip")
                    if round_trip > 0:
                        rtts.append(round_trip / _NTP_SHORT_UNITS_PER_MS)
        elif kind == "rtpjitterbuffer":
            stats = element.get_property("stats")
            if stats is None:
                continue
            jb_found = True
            jb_pushed += _int(stats, "num-pushed")
            jb_lost += _int(stats, "num-lost")
            jb_late += _int(stats, "num-late")
            jb_dup += _int(stats, "num-duplicates")
            jb_jitter_ms = max(jb_jitter_ms, _int(stats, "avg-jitter") / 1e6)
    if sessions == 0:
        return None
    return RtpStats(
        sessions=sessions,
        senders=senders,
        packets_received=received,
        octets_received=octets,
        packets_lost=lost,
        jitter_ms=jitter_ms,
        bitrate_bps=bitrate,
        rtt_ms=max(rtts) if rtts else None,
        jitterbuffer_pushed=jb_pushed if jb_found else None,
        jitterbuffer_lost=jb_lost if jb_found else None,
        packets_late=jb_late if jb_found else None,
        packets_duplicate=jb_dup if jb_found else None,
        jitterbuffer_jitter_ms=jb_jitter_ms if jb_found else None,
    )


def _find_rtpbin(rtspsrc: Gst.Element) -> Gst.Bin | None:
    if not isinstance(rtspsrc, Gst.Bin):
        return None
    for element in _elements(rtspsrc):
        factory = element.get_factory()
        if factory is not None and factory.get_name() == "rtpbin" and isinstance(element, Gst.Bin):
            return element
    return None


def _elements(parent: Gst.Bin) -> Iterator[Gst.Element]:
    """Direct children, taken under the bin's lock: rtspsrc adds elements from its own thread."""
    for _attempt in range(_RESYNC_RETRIES):
        iterator = parent.iterate_elements()
        if iterator is None:
            return
        found: list[Gst.Element] = []
        while True:
            result, element = iterator.next()
            if result == Gst.IteratorResult.OK:
                found.append(element)
                continue
            break
        if result == Gst.IteratorResult.DONE:
            yield from found
            return
        if result != Gst.IteratorResult.RESYNC:
            break
    log.debug("%s: children kept changing while reading RTP stats", parent.get_name())


def _int(structure: Gst.Structure, field: str, default: int = 0) -> int:
    """A numeric field, ``default`` when absent (fields vary between GStreamer versions)."""
    value = structure.get_value(field) if structure.has_field(field) else None
    return int(value) if isinstance(value, int | float) else default


def _flag(structure: Gst.Structure, field: str) -> bool:
    return structure.has_field(field) and bool(structure.get_value(field))
