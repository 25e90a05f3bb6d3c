"""Prometheus metrics, built from live engine state at scrape time.

A custom collector, not long-lived Gauge/Counter objects: every series is generated from the
streams that exist at the moment of the scrape, so a removed stream's series cannot linger
(no ``remove()`` to forget). Each engine gets its own ``CollectorRegistry``, so two engines
in one process (tests) never share or clash.

Two figures are not in the engine's health and are tracked here from its transition events
(an engine listener): recoveries by the category of the failure that started the outage,
and the recovery-time histogram. The health's own recovery list is a bounded ring (200), and
a histogram computed from it would lose counts once the ring wraps, which Prometheus reads
as a counter reset; the cumulative buckets kept here only ever grow.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.process_collector import ProcessCollector

from streamwarden.snapshot import StreamDetail
from streamwarden.state import UP_STATES, StreamState, TransitionEvent

if TYPE_CHECKING:
    from streamwarden.engine import Engine

__all__ = [
    "CONTENT_TYPE",
    "RECOVERY_BUCKETS",
    "EngineCollector",
    "RecoveryTracker",
    "create_registry",
    "render",
]

# Prometheus' classic text format: understood by every Prometheus and agent version.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Seconds from the failure that started an outage to the first frame after it.
RECOVERY_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass
class _Outages:
    """One stream's recovery figures, cumulative since the tracker saw it first."""

    started: float | None = None  # monotonic time of the failure that opened the current outage
    category: str | None = None
    by_category: Counter[str] = field(default_factory=Counter)
    buckets: list[int] = field(default_factory=lambda: [0] * len(RECOVERY_BUCKETS))
    count: int = 0
    total_seconds: float = 0.0


class RecoveryTracker:
    """Engine listener: recoveries by category and a monotonic recovery-time histogram.

    An outage starts at the first transition that carries an error category and ends at the
    next PLAYING, mirroring how the supervisor measures ``recovery_seconds``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, _Outages] = {}

    def on_event(self, stream_id: str, event: TransitionEvent) -> None:
        with self._lock:
            outages = self._streams.setdefault(stream_id, _Outages())
            if event.category is not None and outages.started is None:
                outages.started = event.monotonic
                outages.category = event.category
            elif event.to_state in UP_STATES and outages.started is not None:
                seconds = max(0.0, event.monotonic - outages.started)
                outages.by_category[outages.category or "unknown"] += 1
                outages.count += 1
                outages.total_seconds += seconds
                for index, bound in enumerate(RECOVERY_BUCKETS):
                    if seconds <= bound:
                        outages.buckets[index] += 1
                outages.started = None
                outages.category = None

    def snapshot(self, live: Iterable[str]) -> dict[str, _Outages]:
        """Copies for the live streams; forgets streams that no longer exist."""
        keep = set(live)
        with self._lock:
            for stream_id in [s for s in self._streams if s not in keep]:
                del self._streams[stream_id]
            return {
                stream_id: _Outages(
                    by_category=Counter(o.by_category),
                    buckets=list(o.buckets),
                    count=o.count,
                    total_seconds=o.total_seconds,
                )
                for stream_id, o in self._streams.items()
            }


class EngineCollector:
    """Builds every ``streamwarden_*`` series from a fresh snapshot of the engine."""

    def __init__(
        self,
        details: Callable[[], Sequence[StreamDetail]],
        recoveries: RecoveryTracker,
        incidents: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._details = details
        self._recoveries = recoveries
        self._incidents = incidents

    def describe(self) -> Iterable[Metric]:
        """Names only: lets the registry check for clashes without touching the engine."""
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        details = self._details()
        outages = self._recoveries.snapshot(d.id for d in details)
        families = _families()
        for detail in details:
            _add_stream(families, detail, outages.get(detail.id))
        if self._incidents is not None:
            open_by_kind = Counter(i["kind"] for i in self._incidents() if i["open"])
            gauge = families["incidents"]
            assert isinstance(gauge, GaugeMetricFamily)
            for kind in ("host", "network", "credential", "error_rate"):
                gauge.add_metric([kind], float(open_by_kind.get(kind, 0)))
        return list(families.values())


def _families() -> dict[str, Metric]:
    s = ["stream"]
    return {
        "up": GaugeMetricFamily(
            "streamwarden_stream_up", "1 while frames flow (PLAYING or DEGRADED), else 0.", labels=s
        ),
        "state": GaugeMetricFamily(
            "streamwarden_stream_state",
            "The stream's state, one-hot: 1 for the current state, 0 for every other.",
            labels=["stream", "state"],
        ),
        "frames": CounterMetricFamily(
            "streamwarden_stream_frames", "Video frames received since the stream was added.", labels=s
        ),
        "bytes": CounterMetricFamily(
            "streamwarden_stream_bytes", "Encoded bytes received since the stream was added.", labels=s
        ),
        "fps": GaugeMetricFamily(
            "streamwarden_stream_fps", "Frames per second over the last few seconds.", labels=s
        ),
        "age": GaugeMetricFamily(
            "streamwarden_stream_last_frame_age_seconds",
            "Seconds since the last frame; grows through an outage, absent before the first frame.",
            labels=s,
        ),
        "errors": CounterMetricFamily(
            "streamwarden_stream_errors",
            "Classified errors (including ignored warnings) by category and transience.",
            labels=["stream", "category", "transience"],
        ),
        "recoveries": CounterMetricFamily(
            "streamwarden_stream_recoveries",
            "Outages ended by a first frame, by the category of the failure that began the outage.",
            labels=["stream", "category"],
        ),
        "recovery_seconds": HistogramMetricFamily(
            "streamwarden_stream_recovery_seconds",
            "Time from the failure that began an outage to the first frame after it.",
            labels=s,
        ),
        "attempts": CounterMetricFamily(
            "streamwarden_stream_attempts", "Pipeline attempts since the stream was added.", labels=s
        ),
        "breaker": GaugeMetricFamily(
            "streamwarden_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=s
        ),
        "uptime": GaugeMetricFamily(
            "streamwarden_stream_uptime_seconds", "Seconds since the stream was added.", labels=s
        ),
        "recorder": GaugeMetricFamily(
            "streamwarden_recorder_active",
            "1 while the stream's recorder is writing, else 0 (streams with a record section only).",
            labels=s,
        ),
        "clients": GaugeMetricFamily(
            "streamwarden_rtsp_clients",
            "RTSP clients watching the re-served stream (streams with serve: true only).",
            labels=s,
        ),
        "incidents": GaugeMetricFamily(
            "streamwarden_incidents_open",
            "Open incidents: shared-cause failures (host, network, credential) and error-rate alarms.",
            labels=["kind"],
        ),
        "degraded": GaugeMetricFamily(
            "streamwarden_stream_degraded", "1 while DEGRADED (playing, quality below thresholds).", labels=s
        ),
        "rtp_received": CounterMetricFamily(
            "streamwarden_stream_rtp_packets_received",
            "RTP packets received by the current attempt (RTSP sources; resets on reconnect).",
            labels=s,
        ),
        "rtp_lost": CounterMetricFamily(
            "streamwarden_stream_rtp_packets_lost",
            "RTP packets lost (RFC 3550) in the current attempt (RTSP sources; resets on reconnect).",
            labels=s,
        ),
        "rtp_late": CounterMetricFamily(
            "streamwarden_stream_rtp_packets_late",
            "RTP packets that arrived after the jitter buffer gave up on them (current attempt).",
            labels=s,
        ),
        "rtp_jitter": GaugeMetricFamily(
            "streamwarden_stream_rtp_jitter_ms", "RTP interarrival jitter (RFC 3550), milliseconds.", labels=s
        ),
        "rtp_loss_window": GaugeMetricFamily(
            "streamwarden_stream_rtp_loss_percent",
            "Packet loss over health.degraded.window_seconds, percent (what DEGRADED is judged on).",
            labels=s,
        ),
        "media_errors": CounterMetricFamily(
            "streamwarden_stream_media_errors",
            "Timestamp errors and corrupt frames seen by media sampling, by kind.",
            labels=["stream", "kind"],
        ),
        "strategy_attempts": CounterMetricFamily(
            "streamwarden_stream_strategy_attempts",
            "Recovery attempts by error category and strategy.",
            labels=["stream", "category", "strategy"],
        ),
        "strategy_successes": CounterMetricFamily(
            "streamwarden_stream_strategy_successes",
            "Recovery attempts that brought the stream back, by error category and strategy.",
            labels=["stream", "category", "strategy"],
        ),
        "strategy_seconds": GaugeMetricFamily(
            "streamwarden_stream_strategy_recovery_seconds_mean",
            "Mean time to recover of the successful attempts, by error category and strategy.",
            labels=["stream", "category", "strategy"],
        ),
        "priority": GaugeMetricFamily(
            "streamwarden_stream_priority", "The stream's priority (lower is shed first).", labels=s
        ),
        "shed": GaugeMetricFamily(
            "streamwarden_stream_shed",
            "1 for the shedding level the stream is at (clients, recording, paused).",
            labels=["stream", "level"],
        ),
    }


def _add_stream(families: dict[str, Metric], detail: StreamDetail, outages: _Outages | None) -> None:
    info = detail.info
    stream = detail.id
    health = info.get("health") or {}
    state = str(info.get("state"))

    def add(name: str, value: float, *extra: str) -> None:
        family = families[name]
        assert isinstance(family, GaugeMetricFamily | CounterMetricFamily)
        family.add_metric([stream, *extra], value)

    add("up", 1.0 if state in UP_STATES else 0.0)
    for candidate in StreamState:
        add("state", 1.0 if state == candidate else 0.0, str(candidate))
    add("frames", float(health.get("frames_total") or 0))
    add("bytes", float(health.get("bytes_total") or 0))
    add("fps", float(health.get("fps") or 0.0))
    age = health.get("last_frame_age_seconds")
    if age is not None:
        add("age", float(age))
    for (category, transience), count in sorted(detail.errors_by_key.items()):
        add("errors", float(count), category, transience)
    add("attempts", float(health.get("attempts_total") or 0))
    _add_recoveries(families, stream, int(health.get("recoveries_total") or 0), outages)
    breaker = (info.get("breaker") or {}).get("state")
    if breaker in BREAKER_VALUES:
        add("breaker", float(BREAKER_VALUES[breaker]))
    add("uptime", float(health.get("uptime_seconds") or 0.0))
    recorder = info.get("recorder")
    if recorder is not None:
        add("recorder", 1.0 if recorder.get("active") else 0.0)
    if detail.spec.serve:
        add("clients", float((info.get("server") or {}).get("clients") or 0))
    _add_intelligence(add, info, state)


def _add_intelligence(add: Callable[..., None], info: dict[str, Any], state: str) -> None:
    """Issue 8 figures: transport/media quality, strategy statistics, priority and shedding."""
    add("degraded", 1.0 if state == StreamState.DEGRADED else 0.0)
    add("priority", float(info.get("priority") or 0))
    quality = info.get("quality") or {}
    transport = quality.get("transport")
    if transport:
        add("rtp_received", float(transport.get("packets_received") or 0))
        add("rtp_lost", float(transport.get("packets_lost") or 0))
        add("rtp_late", float(transport.get("packets_late") or 0))
        add("rtp_jitter", float(transport.get("jitter_ms") or 0.0))
        loss = (transport.get("window") or {}).get("loss_percent")
        if loss is not None:
            add("rtp_loss_window", float(loss))
    media = quality.get("media") or {}
    add("media_errors", float(media.get("timestamp_errors_total") or 0), "timestamp")
    add("media_errors", float(media.get("corrupt_frames_total") or 0), "corrupt")
    stats = (info.get("recovery_strategies") or {}).get("stats") or {}
    for category, strategies in sorted(stats.items()):
        for strategy, record in sorted(strategies.items()):
            add("strategy_attempts", float(record.get("attempts") or 0), category, strategy)
            add("strategy_successes", float(record.get("successes") or 0), category, strategy)
            if record.get("mean_seconds") is not None:
                add("strategy_seconds", float(record["mean_seconds"]), category, strategy)
    shed = info.get("shed_level") or "none"
    for level in ("clients", "recording", "paused"):
        add("shed", 1.0 if shed == level else 0.0, level)


def _add_recoveries(families: dict[str, Metric], stream: str, total: int, outages: _Outages | None) -> None:
    """By category from the tracker; recoveries it did not see (before it was attached) as "unknown"."""
    counter = families["recoveries"]
    assert isinstance(counter, CounterMetricFamily)
    by_category = Counter(outages.by_category) if outages else Counter[str]()
    unseen = total - sum(by_category.values())
    if unseen > 0:
        by_category["unknown"] += unseen
    for category, count in sorted(by_category.items()):
        counter.add_metric([stream, category], float(count))
    histogram = families["recovery_seconds"]
    assert isinstance(histogram, HistogramMetricFamily)
    observed = outages or _Outages()
    buckets = [(_le(bound), float(n)) for bound, n in zip(RECOVERY_BUCKETS, observed.buckets, strict=True)]
    buckets.append(("+Inf", float(observed.count)))
    histogram.add_metric([stream], buckets, observed.total_seconds)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def create_registry(engine: Engine, *, process: bool = True) -> CollectorRegistry:
    """A registry for one engine: its streams, plus this process' CPU and memory.

    Attach it before streams are added: recoveries seen before show up as category "unknown"
    and are missing from the histogram.
    """
    tracker = RecoveryTracker()
    engine.add_listener(tracker.on_event)
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine.snapshot, tracker, engine.incident_list))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition (blocks on the engine's loop: call it from a worker thread)."""
    return generate_latest(registry)
