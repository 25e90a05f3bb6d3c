"""Network faults between the engine and a camera (through ``FaultProxy``), RTSP servers that answer
with errors or garbage (``FakeRtspServer``), and changed credentials fixed through the API.

What test_engine_rtsp.py proves with the camera process (kill, SIGSTOP, a mute listener) is not
repeated; here the network misbehaves while the camera is fine, and the proxy's frame count (RTP
marker bits it handed the engine) is compared with the engine's, exactly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from streamwarden.api import create_app
from streamwarden.config import ApiConfig, parse_stream_spec
from streamwarden.engine import Engine
from streamwarden.state import UP_STATES, StreamState
from streamwarden.testing.camera import CameraProcess
from streamwarden.testing.fakertsp import FakeRtspServer
from streamwarden.testing.faultproxy import Direction, FaultProxy
from tests.conftest import CameraFactory
from tests.helpers import count_frames, wait_until
from tests.integration.conftest import FAST, file_spec, wait_state

pytestmark = pytest.mark.integration


def proxied_spec(stream_id: str, proxy: FaultProxy, url: str) -> Any:
    return parse_stream_spec(
        {
            "id": stream_id,
            "source": {
                "type": "rtsp",
                "uri": proxy.url(url),
                "transport": "tcp",
                "connect_timeout_seconds": 3,
            },
            "recovery": FAST,
        }
    )


@pytest.fixture
def proxies() -> Iterator[list[FaultProxy]]:
    made: list[FaultProxy] = []
    yield made
    for proxy in made:
        proxy.stop()


def start_proxy(proxies: list[FaultProxy], cam: CameraProcess) -> FaultProxy:
    proxy = FaultProxy(("127.0.0.1", cam.port), seed=len(proxies))
    proxy.start()
    proxies.append(proxy)
    return proxy


def left_playing_at(engine: Engine, stream_id: str, after: float) -> float | None:
    events = [
        e for e in engine.events(stream_id) if e.monotonic >= after and e.from_state == StreamState.PLAYING
    ]
    return events[0].monotonic if events else None


def drained_counts(engine: Engine, proxy: FaultProxy, stream_id: str) -> tuple[int, int]:
    """Blackhole the proxy's downstream, let the engine take what is in flight, then count."""
    proxy.blackhole(True, Direction.DOWNSTREAM)
    time.sleep(0.5)
    return proxy.stats().frames_forwarded, engine.health(stream_id).frames_total


def test_network_faults_are_detected_recovered_and_no_frame_is_lost_on_the_wire(
    engine: Engine, camera: CameraFactory, proxies: list[FaultProxy]
) -> None:
    mounts = ("/reset", "/hole", "/half", "/slow", "/steady")
    cam = camera(mounts=mounts)
    proxy = {m[1:]: start_proxy(proxies, cam) for m in mounts}
    for name, p in proxy.items():
        engine.add_stream(proxied_spec(name, p, cam.url(f"/{name}")))
    names = list(proxy)
    wait_until(lambda: all(engine.state(n) == StreamState.PLAYING for n in names), 15, message="not playing")
    time.sleep(1.0)

    started = time.monotonic()
    assert proxy["reset"].reset() == 1
    proxy["hole"].blackhole(True)
    assert proxy["half"].half_close(Direction.DOWNSTREAM) == 1
    proxy["slow"].set_latency(0.15, jitter=0.1)  # jittery, but under the stall timeout
    proxy["slow"].set_bandwidth(200_000)  # well above the camera's bitrate

    wait_until(lambda: left_playing_at(engine, "reset", started) is not None, 2, message="reset not seen")
    wait_until(lambda: left_playing_at(engine, "half", started) is not None, 3, message="FIN not seen")
    wait_until(lambda: left_playing_at(engine, "hole", started) is not None, 2 + 1.5, message="no stall")
    detected = {n: (left_playing_at(engine, n, started) or 0) - started for n in ("reset", "half", "hole")}
    assert detected["reset"] < 0.5 and detected["half"] < 1.0, detected
    assert 1.9 <= detected["hole"] <= 3.5, detected  # the engine's own stall watchdog (2 s)
    assert any(e.to_state == StreamState.STALLED for e in engine.events("hole"))
    for name in ("reset", "half"):
        wait_state(engine, name, StreamState.PLAYING, 5)
    time.sleep(1.0)  # the blackhole outlasts a rebuild: attempts time out on connect meanwhile
    proxy["hole"].blackhole(False)
    lifted = time.monotonic()
    wait_state(engine, "hole", StreamState.PLAYING, 8)
    assert time.monotonic() - lifted < 6.5  # connect timeout (3 s) + backoff cap (1 s) + slack

    # Latency, jitter and a bandwidth cap above the bitrate are not outages.
    slow = engine.health("slow")
    # Jitter may mark it DEGRADED (that is what DEGRADED is for), but it is never rebuilt.
    assert engine.state("slow") in UP_STATES and slow.attempts_total == 1, slow
    assert slow.max_frame_gap_seconds < 1.0, slow
    steady = engine.health("steady")
    assert steady.attempts_total == 1 and steady.max_frame_gap_seconds < 0.5, steady

    # Wire-level accounting: every frame the proxy handed the engine was counted, exactly.
    for name in names:
        forwarded, ingested = drained_counts(engine, proxy[name], name)
        assert forwarded > 25 and forwarded == ingested, (name, forwarded, ingested)
    assert proxy["hole"].stats().frames_dropped > 0  # the blackhole really swallowed frames


def test_a_slow_close_hides_a_dead_camera_until_the_frame_watchdog_sees_it(
    engine: Engine, camera: CameraFactory, proxies: list[FaultProxy]
) -> None:
    cam = camera()
    proxy = start_proxy(proxies, cam)
    engine.add_stream(proxied_spec("cam", proxy, cam.url()))
    wait_state(engine, "cam", StreamState.PLAYING, 15)
    proxy.set_slow_close(6.0)
    killed = time.monotonic()
    cam.kill()  # its FIN reaches the engine only 6 s later
    wait_until(lambda: left_playing_at(engine, "cam", killed) is not None, 4, message="dead camera not seen")
    detected = (left_playing_at(engine, "cam", killed) or 0) - killed
    assert 1.9 <= detected < 3.5, detected  # by the 2 s stall watchdog, not by the late FIN
    proxy.set_slow_close(0)
    cam.start()
    wait_state(engine, "cam", StreamState.PLAYING, 10)


@pytest.mark.parametrize(
    ("server", "category"),
    [
        ({"status": 404}, "not_found"),
        ({"status": 454}, "protocol"),
        ({"status": 461}, "protocol"),
        ({"status": 503}, "network"),
        ({"garbage": True}, "network"),
        ({"garbage_on_connect": True}, "network"),
    ],
    ids=["404", "454", "461", "503", "garbage", "garbage-first"],
)
def test_rtsp_error_answers_and_garbage_are_classified_and_the_stream_comes_back(
    engine: Engine, camera: CameraFactory, proxies: list[FaultProxy], server: dict[str, Any], category: str
) -> None:
    cam = camera()
    proxy = start_proxy(proxies, cam)
    engine.add_stream(proxied_spec("cam", proxy, cam.url()))
    wait_state(engine, "cam", StreamState.PLAYING, 15)
    with ExitStack() as stack:
        status = server.get("status")
        fake = FakeRtspServer.failing(status) if status else FakeRtspServer(**server)
        stack.enter_context(fake)
        proxy.set_upstream("127.0.0.1", fake.port)  # the camera's address now answers like this
        proxy.reset()
        wait_until(
            lambda: (
                (engine.info("cam")["last_error"] or {}).get("category") == category
                and fake.connections >= 2  # retried, not given up
            ),
            10,
            message=f"{engine.info('cam')}",
        )
        assert engine.state("cam") in (StreamState.BACKOFF, StreamState.CONNECTING)
        proxy.set_upstream("127.0.0.1", cam.port)
        wait_state(engine, "cam", StreamState.PLAYING, 10)


def test_changed_credentials_fail_as_auth_until_patched_and_never_leak(
    engine: Engine, camera: CameraFactory, proxies: list[FaultProxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cam = camera(user="op", password="old-secret-1")
    proxy = start_proxy(proxies, cam)
    client = TestClient(create_app(engine, config=ApiConfig()))
    spec = proxied_spec("cam", proxy, cam.url())
    body = json.loads(json.dumps(spec.model_dump(mode="json")))
    body["source"]["uri"] = proxy.url(cam.url())
    seen: list[str] = []
    with client:
        assert client.post("/streams", json=body).status_code == 201
        wait_state(engine, "cam", StreamState.PLAYING, 15)
        # Faults with the credentials in flight: reset, a 404 server, garbage.
        proxy.reset()
        wait_state(engine, "cam", StreamState.PLAYING, 10)
        for fake in (FakeRtspServer.failing(404), FakeRtspServer(garbage=True)):
            with fake:
                proxy.set_upstream("127.0.0.1", fake.port)
                proxy.reset()
                wait_until(lambda f=fake: f.connections >= 2, 10, message="fake server not tried")  # type: ignore[misc]
                seen += [client.get("/streams/cam").text, client.get("/metrics").text]
            proxy.set_upstream("127.0.0.1", cam.port)
        wait_state(engine, "cam", StreamState.PLAYING, 10)
        # The camera's password changes: 401 until the operator PATCHes the new one.
        cam.restart(password="new-secret-2")
        wait_until(
            lambda: (engine.info("cam")["last_error"] or {}).get("category") == "auth",
            10,
            message="no auth error",
        )
        assert "credentials" in engine.info("cam")["last_error"]["reason"]
        seen += [client.get(p).text for p in ("/streams", "/streams/cam", "/streams/cam/events", "/metrics")]
        patched = client.patch("/streams/cam", json={"source": {"uri": proxy.url(cam.url())}})
        assert patched.status_code == 200, patched.text
        seen.append(patched.text)
        wait_state(engine, "cam", StreamState.PLAYING, 10)
        seen += [client.get(p).text for p in ("/streams", "/streams/cam/events", "/metrics")]
    seen.append(json.dumps([e.as_dict() for e in engine.events("cam")]))
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "credentials" in logged  # the auth failure was logged: the scan below is not vacuous
    for secret in ("old-secret-1", "new-secret-2"):
        assert secret not in logged, secret
        for text in seen:
            assert secret not in text, (secret, text[:500])


FILE_SOURCE = {"type": "file", "path": "/x"}  # only to parse a record section on its own


def _record_spec(spec: Any, directory: Path, segment_seconds: float) -> Any:
    record = {"dir": str(directory), "segment_seconds": segment_seconds}
    return spec.model_copy(
        update={"record": parse_stream_spec({"id": "x", "source": FILE_SOURCE, "record": record}).record}
    )


def _stop_timed(engine: Engine) -> float:
    started = time.monotonic()
    engine.stop()
    return time.monotonic() - started


def test_a_bandwidth_cap_below_the_bitrate_keeps_recordings_finalized(
    gst_init: None, camera: CameraFactory, proxies: list[FaultProxy], tmp_path: Path
) -> None:
    """Throttled below its bitrate the camera drops RTP packets; on some runs (where the throttle
    cuts the GOPs) splitmuxsink then fails with "Timestamping error on input streams". Whether or
    not it does, nothing may stay .part and the engine must stop at once. The failure itself is
    forced deterministically in the next test."""
    from streamwarden.config import RecordingConfig

    cam = camera(bitrate=300)
    proxy = start_proxy(proxies, cam)
    spec = _record_spec(proxied_spec("cam", proxy, cam.url()), tmp_path, 10)
    engine = Engine(recording=RecordingConfig(min_free_bytes=0))
    engine.start()
    try:
        engine.add_stream(spec)
        wait_state(engine, "cam", StreamState.PLAYING, 15)
        for _ in range(2):
            time.sleep(1.5)
            proxy.set_bandwidth(8_000)
            time.sleep(4)
            proxy.set_bandwidth(None)
        time.sleep(1.0)
        recorder = engine.info("cam")["recorder"]
        if recorder["errors_total"]:  # the failed branch's segment was finalized at the retry
            wait_until(
                lambda: any(s.close_reason == "error" for s in engine.segments("cam")),
                5,
                message=f"failed segment not finalized: {sorted(tmp_path.rglob('*'))}",
            )
    finally:
        stop_seconds = _stop_timed(engine)
    assert stop_seconds < 5, stop_seconds
    assert not list(tmp_path.rglob("*.part.*"))
    for path in tmp_path.rglob("*.mkv"):
        assert count_frames(str(path)) > 0, path


def test_a_timestamping_error_in_the_recorder_finalizes_its_segment_at_the_retry(
    gst_init: None, h264_mkv: Path, tmp_path: Path
) -> None:
    """Regression: after "Timestamping error on input streams" splitmuxsink holds the record
    queue's streaming thread; the failed branch set the queue to NULL before splitmuxsink and
    waited for that thread for ever. Its segment stayed .part until the next start, and the
    pipeline's disposal hung on the same lock (stop > 5 s).

    Forced here without a network: the recorder's running time is set 3 s back mid-stream (a pad
    offset makes GStreamer re-send the segment), as RTP loss does to it."""
    from streamwarden.config import RecordingConfig
    from streamwarden.media.gst import Gst

    engine = Engine(recording=RecordingConfig(min_free_bytes=0))
    engine.start()
    try:
        spec = _record_spec(file_spec("rec", h264_mkv), tmp_path, 10)
        engine.add_stream(spec)
        wait_until(lambda: engine.info("rec")["recorder"]["frames_in"] > 60, 15, message="not recording")

        def _gate() -> Gst.Element:
            pipeline = engine._streams["rec"].pipeline
            assert pipeline is not None
            gate = pipeline.pipeline.get_by_name("record-in-1")
            assert gate is not None
            return gate

        gate = engine.loop.call_sync(_gate)
        pad = gate.get_static_pad("src")
        assert pad is not None
        pad.set_offset(-3 * Gst.SECOND)
        wait_until(
            lambda: engine.info("rec")["recorder"]["errors_total"] == 1, 10, message="no recorder error"
        )
        assert "Timestamping error" in engine.info("rec")["recorder"]["last_error"]
        # The failed branch's segment: renamed, indexed and playable while the stream runs on.
        wait_until(
            lambda: any(s.close_reason == "error" for s in engine.segments("rec")),
            5,
            message=f"failed segment not finalized: {sorted(p.name for p in tmp_path.rglob('*'))}",
        )
        failed = next(s for s in engine.segments("rec") if s.close_reason == "error")
        assert count_frames(failed.path) == failed.frames > 25
        wait_until(lambda: engine.info("rec")["recorder"]["state"] == "active", 10, message="no retry")
        parts = list(tmp_path.rglob("*.part.*"))
        assert len(parts) == 1, parts  # only the retry's own open segment
        assert engine.disposal.abandoned == 0
    finally:
        stop_seconds = _stop_timed(engine)
    assert stop_seconds < 5, stop_seconds
    assert engine.disposal.abandoned == 0
    assert not list(tmp_path.rglob("*.part.*"))
