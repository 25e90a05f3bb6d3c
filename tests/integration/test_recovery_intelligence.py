"""Recovery intelligence end to end: DEGRADED from real RTP loss, one incident for a dead shared
host with paced reconnection, a learned transport switch, and shedding by priority.

Real GStreamer, a real RTSP camera (child process or in-process gst-rtsp-server), real files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from streamwarden.config import (
    EngineConfig,
    LimitsConfig,
    RecordingConfig,
    RtspServerConfig,
    parse_stream_spec,
)
from streamwarden.engine import AdmissionRefusedError, Engine
from streamwarden.state import UP_STATES, StreamState
from streamwarden.testing.udprelay import UdpRelay
from tests.helpers import wait_until
from tests.integration.conftest import FAST

if TYPE_CHECKING:
    from tests.conftest import CameraFactory

pytestmark = pytest.mark.integration


def _spec(stream_id: str, uri: str, **extra: Any) -> Any:
    source = {"type": "rtsp", "uri": uri, "connect_timeout_seconds": 3, **extra.pop("source", {})}
    return parse_stream_spec({"id": stream_id, "source": source, "recovery": FAST, **extra})


def _up(engine: Engine, *ids: str) -> bool:
    return all(engine.state(i) in UP_STATES for i in ids)


# -- transport health -----------------------------------------------------------------------------
def test_udp_loss_marks_the_stream_degraded_with_the_reason_then_clears(
    gst_init: None, camera: CameraFactory
) -> None:
    cam = camera()
    health = {
        "degraded": {"max_loss_percent": 3.0, "window_seconds": 3.0, "clear_after_seconds": 1.0},
        "media_sample_interval_seconds": 0,
    }
    with (
        UdpRelay(("127.0.0.1", cam.port), seed=3) as relay,
        Engine() as engine,
    ):
        engine.add_stream(_spec("lossy", relay.url(cam.url()), source={"transport": "udp"}, health=health))
        wait_until(lambda: engine.state("lossy") == StreamState.PLAYING, 20, message="never PLAYING")
        wait_until(
            lambda: (engine.info("lossy")["quality"]["transport"] or {}).get("packets_received", 0) > 100, 10
        )
        assert engine.state("lossy") == StreamState.PLAYING  # a clean link is not degraded

        relay.set_impairment(drop=0.10, delay=0.02, jitter=0.015)
        wait_until(
            lambda: engine.state("lossy") == StreamState.DEGRADED, 20, message="loss never degraded it"
        )
        info = engine.info("lossy")
        assert any(r.startswith("packet loss ") for r in info["degraded_reasons"]), info["degraded_reasons"]
        transport = info["quality"]["transport"]
        assert transport["packets_lost"] > 0 and transport["window"]["loss_percent"] > 3.0, transport
        degraded = [e for e in engine.events("lossy") if e.to_state == StreamState.DEGRADED]
        assert degraded and "packet loss" in degraded[-1].reason
        assert engine.health("lossy").attempts_total == 1  # still playing: nothing was rebuilt

        relay.set_impairment()
        wait_until(lambda: engine.state("lossy") == StreamState.PLAYING, 25, message="never cleared")
        assert engine.info("lossy")["degraded_reasons"] == []
        assert engine.health("lossy").attempts_total == 1


# -- correlation ----------------------------------------------------------------------------------
def test_ten_streams_on_a_dead_host_make_one_incident_reconnect_paced_and_all_come_back(
    gst_init: None, camera: CameraFactory
) -> None:
    cam = camera()
    ids = [f"cam{i}" for i in range(10)]
    config = EngineConfig.model_validate({"correlation": {"min_streams": 3, "release_spread_seconds": 0.1}})
    with Engine(config) as engine:
        for stream_id in ids:
            engine.add_stream(_spec(stream_id, cam.url()))
        wait_until(lambda: _up(engine, *ids), 30, message="not all PLAYING")

        cam.kill()
        wait_until(lambda: any(i["open"] and i["kind"] == "host" for i in engine.incident_list()), 10)
        before = {i: engine.health(i).attempts_total for i in ids}
        probes = [i for i in ids if (engine.info(i)["incident"] or {}).get("probe")]
        assert len(probes) == 1, [engine.info(i)["incident"] for i in ids]
        probe = probes[0]
        # The host stays dead: the probe keeps retrying (every <= 1 s with FAST backoff) ...
        wait_until(lambda: engine.health(probe).attempts_total - before[probe] >= 4, 10)
        incidents = [i for i in engine.incident_list() if i["open"] and i["kind"] == "host"]
        assert len(incidents) == 1, incidents
        incident = incidents[0]
        assert incident["key"] == f"127.0.0.1:{cam.port}" and sorted(incident["stream_ids"]) == ids
        assert "unreachable: 10 streams" in incident["summary"], incident
        attempts = {i: engine.health(i).attempts_total - before[i] for i in ids}
        others = [attempts[i] for i in ids if i not in probes]
        # ... while the others, unpaced, would have retried as often; paced, they wait for the
        # probe's result (a retry already scheduled when the incident opened still runs).
        assert max(others) <= 1, attempts

        cam.start()
        wait_until(lambda: _up(engine, *ids), 30, message="not all back after the host returned")
        wait_until(lambda: not any(i["open"] and i["kind"] == "host" for i in engine.incident_list()), 15)
        closed = [i for i in engine.incident_list() if i["id"] == incident["id"]]
        assert closed and closed[0]["closed_at"] is not None


# -- adaptive strategies --------------------------------------------------------------------------
class ToggleServer:
    """In-process gst-rtsp-server serving one transport at a time; ``toggle`` flips it and drops
    every client, so the stream's current transport is refused and only a switch brings it back."""

    def __init__(self) -> None:
        from gi.repository import GstRtsp, GstRtspServer

        from streamwarden.media.loop import LoopThread

        self._lower = GstRtsp.RTSPLowerTrans
        self.loop = LoopThread("toggle-rtsp")
        self.loop.start()
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address("127.0.0.1")
        self.server.set_service("0")
        self.factory = GstRtspServer.RTSPMediaFactory()
        self.factory.set_launch(
            "( videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=15/1 ! "
            "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 )"
        )
        self.factory.set_shared(False)
        self.transport = "tcp"
        self.factory.set_protocols(self._lower.TCP)
        mounts = self.server.get_mount_points()
        assert mounts is not None
        mounts.add_factory("/cam", self.factory)
        self.loop.call(lambda: self.server.attach(self.loop.context)).result(5)
        self.port = self.server.get_bound_port()

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def toggle(self) -> None:
        def _flip() -> None:
            self.transport = "udp" if self.transport == "tcp" else "tcp"
            self.factory.set_protocols(self._lower.UDP if self.transport == "udp" else self._lower.TCP)

            def _close(_server: Any, client: Any, _data: Any) -> Any:
                from gi.repository import GstRtspServer

                client.close()
                return GstRtspServer.RTSPFilterResult.REMOVE

            self.server.client_filter(_close, None)

        self.loop.call(_flip).result(5)

    def close(self) -> None:
        from gi.repository import GstRtspServer

        def _drop() -> None:
            self.server.client_filter(lambda *_: GstRtspServer.RTSPFilterResult.REMOVE, None)

        with contextlib.suppress(Exception):
            self.loop.call(_drop).result(5)
        self.loop.stop()


@pytest.fixture
def toggle_server(gst_init: None) -> Iterator[ToggleServer]:
    server = ToggleServer()
    try:
        yield server
    finally:
        server.close()


def test_a_transport_switch_that_always_works_becomes_the_preferred_strategy(
    toggle_server: ToggleServer,
) -> None:
    recovery = {**FAST, "strategy_min_trials": 1}
    spec = parse_stream_spec(
        {
            "id": "flip",
            "source": {
                "type": "rtsp",
                "uri": toggle_server.url,
                "transport": "auto",
                "connect_timeout_seconds": 3,
            },
            "recovery": recovery,
            "health": {"media_sample_interval_seconds": 0},
        }
    )
    with Engine() as engine:
        engine.add_stream(spec)
        wait_until(lambda: _up(engine, "flip"), 20, message="never PLAYING")
        recovered_by: list[str] = []
        for cycle in range(6):
            done = engine.health("flip").recoveries_total
            toggle_server.toggle()

            def recovered(n: int = done) -> bool:
                return engine.health("flip").recoveries_total > n and _up(engine, "flip")

            wait_until(recovered, 25, message=f"cycle {cycle}: no recovery")
            ups = [e for e in engine.events("flip") if e.to_state in UP_STATES and "recovered" in e.reason]
            recovered_by.append(ups[-1].reason.rsplit(" by ", 1)[-1])
        info = engine.info("flip")["recovery_strategies"]
        assert set(info["preferred"].values()) == {"switch_transport"}, info
        for by_category in info["stats"].values():
            switch = by_category["switch_transport"]
            assert switch["success_rate"] == 1.0 and switch["successes"] >= 4, by_category
            for name in ("reconnect_now", "reconnect"):
                if name in by_category:
                    assert by_category[name]["successes"] == 0, by_category
        # Once learned, the first strategy tried is the switch: the last outages need one attempt.
        assert recovered_by[-2:] == ["switch_transport", "switch_transport"], recovered_by
        last_outage = engine.events("flip")[-3:]
        assert [e.to_state for e in last_outage][-1] in UP_STATES


# -- resource pressure ----------------------------------------------------------------------------
def test_memory_pressure_sheds_by_priority_in_order_and_restores_in_reverse(
    gst_init: None, h264_mp4: Path, tmp_path: Path
) -> None:
    config = EngineConfig.model_validate({"limits": {"check_interval_seconds": 0.2, "step_seconds": 0.3}})
    engine = Engine(
        config,
        rtsp_server=RtspServerConfig(host="127.0.0.1", port=0),
        recording=RecordingConfig(min_free_bytes=0),
    )
    priorities = {"low": 0, "mid": 5, "high": 10}
    with engine:
        for stream_id, priority in priorities.items():
            spec = parse_stream_spec(
                {
                    "id": stream_id,
                    "source": {"type": "file", "path": str(h264_mp4)},
                    "recovery": FAST,
                    "serve": True,
                    "record": {"dir": str(tmp_path / stream_id), "segment_seconds": 2},
                    "priority": priority,
                }
            )
            engine.add_stream(spec)
        wait_until(lambda: _up(engine, *priorities), 20, message="not all PLAYING")

        # A limit far below what any process uses: pressure until it is raised again.
        engine.set_limits(LimitsConfig(max_memory_mb=1, check_interval_seconds=0.2, step_seconds=0.3))
        wait_until(lambda: engine.state("high") == StreamState.STOPPED, 30, message="high never shed")
        resources = engine.resources()
        assert resources["under_pressure"] and resources["pressure"][0].startswith("rss"), resources
        order = _levels_in_order(engine, priorities)
        assert order == [
            ("low", "clients"),
            ("low", "recording"),
            ("low", "paused"),
            ("mid", "clients"),
            ("mid", "recording"),
            ("mid", "paused"),
            ("high", "clients"),
            ("high", "recording"),
            ("high", "paused"),
        ], order
        for stream_id in priorities:
            info = engine.info(stream_id)
            assert info["state"] == "STOPPED" and "shed under resource pressure" in info["reason"], info
            assert info["recorder"]["state"] in ("paused", "stopped", "idle"), info["recorder"]
        with pytest.raises(AdmissionRefusedError, match="under resource pressure"):
            engine.add_stream(
                parse_stream_spec({"id": "late", "source": {"type": "file", "path": str(h264_mp4)}})
            )

        engine.set_limits(LimitsConfig(max_memory_mb=1_000_000, check_interval_seconds=0.2, step_seconds=0.3))
        wait_until(
            lambda: _up(engine, *priorities) and not engine.resources()["shed"], 40, message="not restored"
        )
        restored = _levels_in_order(engine, priorities, restoring=True)
        assert [s for s, _ in restored][:3] == ["high", "high", "high"], restored
        assert [s for s, _ in restored][-3:] == ["low", "low", "low"], restored
        for stream_id in priorities:

            def active(stream: str = stream_id) -> bool:
                return _recorder_state(engine, stream) == "active"

            wait_until(active, 20, message=f"{stream_id}: recording not back")
            assert engine.info(stream_id)["server"]["shed_reason"] is None


def _recorder_state(engine: Engine, stream_id: str) -> str:
    return str(engine.info(stream_id)["recorder"]["state"])


def _levels_in_order(
    engine: Engine, priorities: dict[str, int], restoring: bool = False
) -> list[tuple[str, str]]:
    """Shedding (or restoring) steps in the order the engine logged them, from its history."""
    history = engine.shed_history()
    wanted = [h for h in history if h["shedding"] != restoring]
    return [(h["stream_id"], h["level"]) for h in wanted if h["stream_id"] in priorities]


def test_a_stream_over_max_streams_is_refused_with_the_limit_named(gst_init: None, h264_mp4: Path) -> None:
    config = EngineConfig.model_validate({"limits": {"max_streams": 2}})
    with Engine(config) as engine:
        for stream_id in ("a", "b"):
            engine.add_stream(
                parse_stream_spec({"id": stream_id, "source": {"type": "file", "path": str(h264_mp4)}})
            )
        with pytest.raises(
            AdmissionRefusedError, match=r"engine\.limits: max_streams reached: 2 streams \(limit 2\)"
        ):
            engine.add_stream(
                parse_stream_spec({"id": "c", "source": {"type": "file", "path": str(h264_mp4)}})
            )
        wait_until(lambda: _up(engine, "a", "b"), 10)  # the running ones are untouched
        assert engine.stream_ids() == ["a", "b"]
