"""The metrics collector, read back through Prometheus' own text parser (no engine, no GStreamer)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streamwarden.config import parse_stream_spec
from streamwarden.metrics import RECOVERY_BUCKETS, EngineCollector, RecoveryTracker, render
from streamwarden.snapshot import StreamDetail
from streamwarden.state import StreamState, TransitionEvent


def detail(stream_id: str, state: str = "PLAYING", **overrides: Any) -> StreamDetail:
    spec_data: dict[str, Any] = {"id": stream_id, "source": {"type": "file", "path": "/clip.mp4"}}
    spec_data.update(overrides.pop("spec", {}))
    health = {
        "fps": 25.0,
        "last_frame_age_seconds": 0.04,
        "frames_total": 100,
        "bytes_total": 5000,
        "recoveries_total": 0,
        "uptime_seconds": 12.5,
        "attempts_total": 1,
    }
    health.update(overrides.pop("health", {}))
    info: dict[str, Any] = {
        "id": stream_id,
        "state": state,
        "health": health,
        "breaker": {"state": "closed"},
        "recorder": None,
        "server": None,
        **overrides,
    }
    return StreamDetail(info=info, spec=parse_stream_spec(spec_data), errors_by_key={})


def event(to_state: StreamState, at: float, category: str | None = None) -> TransitionEvent:
    return TransitionEvent(
        at=at,
        monotonic=at,
        from_state=StreamState.CONNECTING,
        to_state=to_state,
        reason="x",
        category=category,
    )


def scrape(details: list[StreamDetail], tracker: RecoveryTracker | None = None) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(EngineCollector(lambda: details, tracker or RecoveryTracker()))
    text = render(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(families: dict[str, Any], name: str, **labels: str) -> list[Any]:
    """Samples called ``name`` (e.g. ``..._total``, ``..._bucket``) whose labels include ``labels``."""
    return [
        s
        for family in families.values()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    found = samples(families, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return float(found[0].value)


def test_every_documented_metric_is_exposed_with_its_type() -> None:
    families = scrape([detail("cam1", spec={"serve": True}, recorder={"active": True})])
    expected = {
        "streamwarden_stream_up": "gauge",
        "streamwarden_stream_state": "gauge",
        "streamwarden_stream_frames": "counter",
        "streamwarden_stream_bytes": "counter",
        "streamwarden_stream_fps": "gauge",
        "streamwarden_stream_last_frame_age_seconds": "gauge",
        "streamwarden_stream_errors": "counter",
        "streamwarden_stream_recoveries": "counter",
        "streamwarden_stream_recovery_seconds": "histogram",
        "streamwarden_stream_attempts": "counter",
        "streamwarden_breaker_state": "gauge",
        "streamwarden_stream_uptime_seconds": "gauge",
        "streamwarden_recorder_active": "gauge",
        "streamwarden_rtsp_clients": "gauge",
    }
    assert {name: families[name].type for name in expected} == expected
    assert value(families, "streamwarden_stream_up", stream="cam1") == 1
    assert value(families, "streamwarden_stream_frames_total", stream="cam1") == 100
    assert value(families, "streamwarden_stream_bytes_total", stream="cam1") == 5000
    assert value(families, "streamwarden_stream_fps", stream="cam1") == 25
    assert value(families, "streamwarden_stream_last_frame_age_seconds", stream="cam1") == 0.04
    assert value(families, "streamwarden_stream_uptime_seconds", stream="cam1") == 12.5
    assert value(families, "streamwarden_breaker_state", stream="cam1") == 0
    assert value(families, "streamwarden_recorder_active", stream="cam1") == 1
    assert value(families, "streamwarden_rtsp_clients", stream="cam1") == 0


def test_state_is_one_hot_over_every_state() -> None:
    families = scrape([detail("cam1", state="BACKOFF")])
    states = {
        s.labels["state"]: s.value for s in samples(families, "streamwarden_stream_state", stream="cam1")
    }
    assert set(states) == {str(s) for s in StreamState}
    assert states.pop("BACKOFF") == 1
    assert set(states.values()) == {0}
    assert value(families, "streamwarden_stream_up", stream="cam1") == 0


def test_errors_carry_category_and_transience() -> None:
    cam = detail("cam1")
    cam.errors_by_key.update({("network", "transient"): 3, ("auth", "recoverable"): 1})
    families = scrape([cam])
    name = "streamwarden_stream_errors_total"
    assert value(families, name, stream="cam1", category="network", transience="transient") == 3
    assert value(families, name, stream="cam1", category="auth", transience="recoverable") == 1


def test_breaker_values_and_optional_series() -> None:
    details = [
        detail("open", breaker={"state": "open"}),
        detail("half", breaker={"state": "half_open"}, health={"last_frame_age_seconds": None}),
    ]
    families = scrape(details)
    assert value(families, "streamwarden_breaker_state", stream="open") == 2
    assert value(families, "streamwarden_breaker_state", stream="half") == 1
    # No frame in the current attempt: no age sample (rather than a made-up 0).
    assert samples(families, "streamwarden_stream_last_frame_age_seconds", stream="half") == []
    # Neither records nor serves: no recorder or client series at all.
    assert samples(families, "streamwarden_recorder_active") == []
    assert samples(families, "streamwarden_rtsp_clients") == []


def test_recoveries_by_category_and_a_cumulative_histogram() -> None:
    tracker = RecoveryTracker()
    # Outage 1: network failure at t=10, a second failure (auth) in the same outage, back at t=10.3.
    tracker.on_event("cam1", event(StreamState.BACKOFF, 10.0, "network"))
    tracker.on_event("cam1", event(StreamState.BACKOFF, 10.1, "auth"))
    tracker.on_event("cam1", event(StreamState.PLAYING, 10.3))
    # Outage 2: not_found for 7 s.
    tracker.on_event("cam1", event(StreamState.BACKOFF, 20.0, "not_found"))
    tracker.on_event("cam1", event(StreamState.PLAYING, 27.0))
    # The engine counted one more recovery than the tracker saw (it was attached late).
    families = scrape([detail("cam1", health={"recoveries_total": 3})], tracker)
    name = "streamwarden_stream_recoveries_total"
    assert value(families, name, stream="cam1", category="network") == 1
    assert value(families, name, stream="cam1", category="not_found") == 1
    assert value(families, name, stream="cam1", category="unknown") == 1
    assert samples(families, name, category="auth") == []
    buckets = {
        s.labels["le"]: s.value
        for s in samples(families, "streamwarden_stream_recovery_seconds_bucket", stream="cam1")
    }
    assert len(buckets) == len(RECOVERY_BUCKETS) + 1
    assert buckets["0.25"] == 0 and buckets["0.5"] == 1 and buckets["5.0"] == 1
    assert buckets["10.0"] == 2 and buckets["+Inf"] == 2
    assert value(families, "streamwarden_stream_recovery_seconds_count", stream="cam1") == 2
    assert abs(value(families, "streamwarden_stream_recovery_seconds_sum", stream="cam1") - 7.3) < 1e-6


def test_a_removed_stream_has_no_series_left() -> None:
    tracker = RecoveryTracker()
    tracker.on_event("gone", event(StreamState.BACKOFF, 1.0, "network"))
    tracker.on_event("gone", event(StreamState.PLAYING, 2.0))
    gone = detail("gone")
    gone.errors_by_key[("network", "transient")] = 1
    details = [detail("kept"), gone]
    assert any(s.labels.get("stream") == "gone" for f in scrape(details, tracker).values() for s in f.samples)
    details.remove(gone)
    families = scrape(details, tracker)
    streams = {s.labels.get("stream") for f in families.values() for s in f.samples}
    assert streams == {"kept"}
    # Re-added under the same id: starts from nothing, not from the old stream's counts.
    details.append(detail("gone"))
    families = scrape(details, tracker)
    assert samples(families, "streamwarden_stream_recoveries_total", stream="gone") == []


def test_label_values_are_escaped_by_the_exposition() -> None:
    # Stream ids are restricted by pattern, but categories come from user error rules.
    cam = detail("cam1")
    cam.errors_by_key[('odd"cat\\', "transient")] = 1
    families = scrape([cam])
    assert value(families, "streamwarden_stream_errors_total", category='odd"cat\\') == 1


def test_the_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard_path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "streamwarden.json"
    dashboard = json.loads(dashboard_path.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "stream"]
    used = set(re.findall(r"streamwarden_[a-z_]+", dashboard_path.read_text()))
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    exported = set()
    for family in EngineCollector(list, RecoveryTracker()).describe():
        exported.add(family.name)
        exported.update(family.name + suffix for suffix in suffixes.get(family.type, []))
    assert used and used <= exported, used - exported
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert 'stream=~"$stream"' in target["expr"], (panel["title"], target["expr"])
