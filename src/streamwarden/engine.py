"""The engine: many supervised streams on one GLib loop thread, driven through a Python API.

Every public method is thread-safe: it marshals its work onto the loop thread and waits
for the result, so callers (CLI, REST API, tests) never touch GStreamer objects. An engine
holds no module-level state; several can run in one process.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

from streamwarden.config import (  # noqa: E402
    EngineConfig,
    LimitsConfig,
    RecordConfig,
    RecordingConfig,
    RecoveryConfig,
    RtspServerConfig,
    SourceSpec,
    StreamSpec,
    redacted_spec,
)
from streamwarden.health import HealthSnapshot  # noqa: E402
from streamwarden.incidents import IncidentLog  # noqa: E402
from streamwarden.media.loop import LoopThread  # noqa: E402
from streamwarden.media.pipeline import DisposalStats, StreamPipeline  # noqa: E402
from streamwarden.media.recorder_service import RecordingService  # noqa: E402
from streamwarden.media.rtspserver import RtspServer  # noqa: E402
from streamwarden.policy.classify import Classifier  # noqa: E402
from streamwarden.policy.correlation import Correlator  # noqa: E402
from streamwarden.policy.error_rate import ErrorRateDetector  # noqa: E402
from streamwarden.policy.pressure import ShedLevel, StreamLoad  # noqa: E402
from streamwarden.policy.token_bucket import TokenBucket  # noqa: E402
from streamwarden.recording.index import Gap, SegmentRecord  # noqa: E402
from streamwarden.shedding import LoadShedder  # noqa: E402
from streamwarden.snapshot import StreamDetail  # noqa: E402
from streamwarden.state import StreamState, TransitionEvent  # noqa: E402
from streamwarden.stream import EngineServices, StreamSupervisor, source_kind  # noqa: E402

log = logging.getLogger(__name__)
T = TypeVar("T")

TICK_SECONDS = 0.25
CALL_TIMEOUT = 15.0


class StreamNotFoundError(KeyError):
    """No stream with that id."""


class StreamExistsError(ValueError):
    """A stream with that id is already running."""


def _errors_by_key(supervisor: StreamSupervisor) -> dict[tuple[str, str], int]:
    return {(str(c), str(t)): n for (c, t), n in supervisor.health.errors_by_key.items()}


class AdmissionRefusedError(RuntimeError):
    """A new stream would exceed a configured limit (``engine.limits``): refused, nothing else touched."""


class Engine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        name: str = "streamwarden",
        rtsp_server: RtspServerConfig | None = None,
        recording: RecordingConfig | None = None,
    ) -> None:
        Gst.init(None)
        self.config = config or EngineConfig()
        self.loop = LoopThread(name=f"{name}-glib")
        # Re-serving (streams with serve: true); attached to this engine's loop context.
        self.rtsp_server = RtspServer(rtsp_server, self.loop) if rtsp_server is not None else None
        self._streams: dict[str, StreamSupervisor] = {}
        self._listeners: list[Callable[[str, TransitionEvent], None]] = []
        self.disposal = DisposalStats()
        # Recorders, segment index, retention and disk guard (streams with a record section).
        self.recording = RecordingService(recording or RecordingConfig(), self.loop, self._pipeline_of)
        budget = self.config.reconnect_budget
        correlation = self.config.correlation
        self.correlator = Correlator(
            window_seconds=correlation.window_seconds,
            min_streams=correlation.min_streams,
            release_spread_seconds=correlation.release_spread_seconds,
            clock=clock,
        )
        self.error_rates = ErrorRateDetector(
            window_seconds=correlation.error_rate_window_seconds,
            raise_per_minute=correlation.error_rate_raise_per_minute,
            clear_per_minute=correlation.error_rate_clear_per_minute,
            clock=clock,
        )
        self.incidents = IncidentLog()
        self.shedder = LoadShedder(self.config.limits, self, clock)
        self._clock = clock
        self._analyzed_at = 0.0
        self.services = EngineServices(
            loop=self.loop,
            classifier=Classifier(self.config.rules()),
            budget=TokenBucket(budget.rate_per_second, budget.burst, clock),
            disposal=self.disposal,
            teardown_timeout=self.config.teardown_timeout_seconds,
            event_ring_size=self.config.event_ring_size,
            clock=clock,
            rng=rng,
            on_event=self._dispatch_event,
            branch_factories=[self.recording.branch_for],
            recording=self.recording,
            serve_status=self.rtsp_server.status if self.rtsp_server is not None else None,
            correlator=self.correlator,
            error_rates=self.error_rates,
        )
        if self.rtsp_server is not None:
            self.services.branch_factories.append(self.rtsp_server.branch_for)
        self._started = False

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self.loop.start()
        self.recording.start()
        self.loop.call_sync(lambda: self.loop.timeout(TICK_SECONDS, self._tick))
        if self.rtsp_server is not None:
            try:
                self.loop.call_sync(self.rtsp_server.start)
            except Exception:
                self.loop.stop()
                raise
        self._started = True

    @property
    def rtsp_port(self) -> int | None:
        """The RTSP server's bound port (the real one when configured with port 0)."""
        return self.rtsp_server.port if self.rtsp_server is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every stream (closing recordings), then the loop; bounded by ``timeout``."""
        if not self._started:
            return
        deadline = time.monotonic() + timeout
        try:
            self.loop.call_sync(self._stop_all, timeout=timeout)
        except TimeoutError:
            log.error("engine stop: streams did not stop within %.1f s", timeout)
        if self.rtsp_server is not None:
            try:
                self.loop.call_sync(self.rtsp_server.stop, timeout=max(0.5, deadline - time.monotonic()))
            except Exception:
                log.exception("engine stop: the RTSP server did not stop cleanly")
        # Give disposal threads (recording finalisation) their bounded time.
        while self.pending_disposals() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.recording.close(timeout=max(1.0, deadline - time.monotonic()))  # last segments indexed
        self.loop.stop(timeout=max(0.5, deadline - time.monotonic()))
        self._started = False

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def pending_disposals(self) -> int:
        import threading

        return sum(1 for t in threading.enumerate() if t.name.startswith("dispose-") and t.is_alive())

    def add_listener(self, listener: Callable[[str, TransitionEvent], None]) -> None:
        """Called (on the loop thread) for every state transition of every stream."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[str, TransitionEvent], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- stream control ------------------------------------------------------------------------
    def add_stream(
        self, spec: StreamSpec, *, quarantined_for: float | None = None, quarantine_reason: str = ""
    ) -> None:
        """Add and start a stream; ``quarantined_for`` seconds puts it straight into quarantine
        without a connection attempt (a stream restored from the state file keeps its term)."""

        def _add() -> None:
            if spec.id in self._streams:
                raise StreamExistsError(spec.id)
            refusal = self.shedder.admit(len(self._streams), spec.priority)
            if refusal is not None:
                log.warning("[%s] not added: %s", spec.id, refusal)
                raise AdmissionRefusedError(f"engine.limits: {refusal}")
            supervisor = StreamSupervisor(spec, self.services)
            if quarantined_for is not None and quarantined_for > 0:
                supervisor.quarantine.impose(quarantined_for, quarantine_reason or "quarantined")
            self._streams[spec.id] = supervisor
            self.recording.register(spec)  # recovers crash leftovers even if the stream stays off
            self._sync_mount(spec)
            supervisor._guarded(supervisor.start)

        self._call(_add)

    def remove_stream(self, stream_id: str) -> None:
        def _remove() -> None:
            supervisor = self._get(stream_id)
            supervisor.stop("removed")
            supervisor.forget()
            self.shedder.forget(stream_id)
            del self._streams[stream_id]
            self.recording.forget(stream_id)
            if self.rtsp_server is not None:
                self.rtsp_server.remove_stream(stream_id)

        self._call(_remove)

    def update_stream(self, spec: StreamSpec) -> None:
        def _update() -> None:
            supervisor = self._get(spec.id)
            self._sync_mount(spec)  # before the restart, so its attempt gets the serve branch
            supervisor.update_spec(spec)

        self._call(_update)

    def replace_source(self, stream_id: str, source: SourceSpec) -> None:
        def _replace() -> None:
            supervisor = self._get(stream_id)
            supervisor.update_spec(supervisor.spec.model_copy(update={"source": source}))

        self._call(_replace)

    def set_recovery(self, stream_id: str, recovery: RecoveryConfig) -> None:
        self._call(lambda: self._get(stream_id).apply_recovery(recovery))

    def resume(self, stream_id: str) -> None:
        self._call(lambda: self._get(stream_id).resume())

    def restart(self, stream_id: str) -> None:
        self._call(lambda: self._get(stream_id).restart())

    def stop_stream(self, stream_id: str) -> None:
        self._call(lambda: self._get(stream_id).stop())

    # -- recovery intelligence -----------------------------------------------------------------
    def incident_list(self) -> list[dict[str, Any]]:
        """Shared-cause incidents and error-rate alarms: open ones first, then recent closed ones."""
        return self._call(self.incidents.all)

    def resources(self) -> dict[str, Any]:
        """The process's figures, its limits, whether it is under pressure and what is shed."""
        return self._call(self.shedder.describe)

    def shed_history(self) -> list[dict[str, Any]]:
        """Shedding and restoring steps taken, oldest first (bounded)."""
        return self._call(lambda: list(self.shedder.history))

    def set_limits(self, limits: LimitsConfig) -> None:
        """New resource limits, effective at the next check (restoring starts once under them)."""

        def _set() -> None:
            self.config = self.config.model_copy(update={"limits": limits})
            self.shedder.configure(limits)

        self._call(_set)

    # ShedPlanner's view of the streams, and carrying its steps out (loop thread).
    def shed_loads(self) -> list[StreamLoad]:
        return [
            StreamLoad(
                id=s.id,
                priority=s.spec.priority,
                serving=s.spec.serve and self.rtsp_server is not None,
                recording=s.spec.record is not None,
                level=self.shedder.level(s.id),
            )
            for s in self._streams.values()
            if s.spec.enabled and not (s.state == StreamState.STOPPED and not s.shed_paused)
        ]

    def apply_shed(self, stream_id: str, level: ShedLevel, reason: str | None) -> None:
        supervisor = self._streams.get(stream_id)
        if supervisor is None:
            return
        spec = supervisor.spec
        if self.rtsp_server is not None and spec.serve:
            self.rtsp_server.shed_clients(stream_id, reason if level >= ShedLevel.CLIENTS else None)
        if spec.record is not None:
            self.recording.shed(stream_id, reason if level >= ShedLevel.RECORDING else None)
        if level >= ShedLevel.PAUSED:
            supervisor.shed_pause(reason or "resource pressure")
        else:
            supervisor.shed_resume()

    # -- recording -----------------------------------------------------------------------------
    def start_recording(self, stream_id: str) -> None:
        """(Re)start a stream's recorder; the ingest is not touched. ValueError: no record section."""
        self._call(lambda: self.recording.start_recording(self._get(stream_id).spec))

    def stop_recording(self, stream_id: str) -> None:
        """Close the current segment and stop recording; the ingest and other sinks go on."""
        self._call(lambda: self.recording.stop_recording(self._get(stream_id).spec))

    def segments(
        self, stream_id: str, since: datetime | float | None = None, until: datetime | float | None = None
    ) -> list[SegmentRecord]:
        """Indexed segments of a stream overlapping [since, until] (UTC datetimes or epoch), oldest first."""
        record = self._record_config(stream_id)
        return self.recording.segments(stream_id, record, since, until)

    def recording_gaps(
        self,
        stream_id: str,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        min_seconds: float = 1.0,
    ) -> list[Gap]:
        """Holes between consecutive segments (outages, pauses, stopped recording)."""
        record = self._record_config(stream_id)
        return self.recording.gaps(stream_id, record, since, until, min_seconds)

    def reconcile_recordings(self, stream_id: str, timeout: float = 60.0) -> dict[str, int]:
        """Recover leftovers, index orphan files, drop rows without files (blocking, off the loop)."""
        record = self._record_config(stream_id)
        recorder = self._call(lambda: self.recording.recorder(stream_id))
        open_paths = recorder.open_paths if recorder is not None else set
        service = self.recording
        return service.maintenance.submit(lambda: service.reconcile(stream_id, record, open_paths)).result(
            timeout
        )

    def _record_config(self, stream_id: str) -> RecordConfig:
        record = self.spec(stream_id).record
        if record is None:
            raise ValueError(f"stream {stream_id!r} has no record section")
        return record

    # -- reading -------------------------------------------------------------------------------
    def stream_ids(self) -> list[str]:
        return self._call(lambda: list(self._streams))

    def state(self, stream_id: str) -> StreamState:
        return self._call(lambda: self._get(stream_id).state)

    def health(self, stream_id: str) -> HealthSnapshot:
        return self._call(lambda: self._get(stream_id).health_snapshot())

    def events(self, stream_id: str) -> list[TransitionEvent]:
        return self._call(lambda: list(self._get(stream_id).machine.events))

    def spec(self, stream_id: str) -> StreamSpec:
        return self._call(lambda: self._get(stream_id).spec)

    def info(self, stream_id: str) -> dict[str, Any]:
        return self._call(lambda: self._info(self._get(stream_id)))

    def list_streams(self) -> list[dict[str, Any]]:
        return self._call(lambda: [self._info(s) for s in self._streams.values()])

    def snapshot(self, timeout: float = CALL_TIMEOUT) -> list[StreamDetail]:
        """Every stream's detail in one loop hop (a consistent view for metrics and the state file)."""

        def _collect() -> list[StreamDetail]:
            return [
                StreamDetail(
                    info=self._info(supervisor),
                    spec=supervisor.spec,
                    errors_by_key={
                        (str(c), str(t)): n for (c, t), n in supervisor.health.errors_by_key.items()
                    },
                )
                for supervisor in self._streams.values()
            ]

        if not self._started:
            raise RuntimeError("engine is not started")
        return self.loop.call_sync(_collect, timeout=timeout)

    def transition_counts(self, stream_id: str) -> dict[str, int]:
        def _counts() -> dict[str, int]:
            counts = self._get(stream_id).machine.counts
            return {f"{a}->{b}": n for (a, b), n in counts.items()}

        return self._call(_counts)

    # -- internals -----------------------------------------------------------------------------
    def _info(self, supervisor: StreamSupervisor) -> dict[str, Any]:
        description = supervisor.describe()
        return {
            "id": supervisor.id,
            "source_type": source_kind(supervisor.spec),
            "state": description.pop("state"),
            **description,
            "shed_level": self.shedder.level(supervisor.id).name.lower(),
            "spec": redacted_spec(supervisor.spec),
            "health": supervisor.health_snapshot().as_dict(),
        }

    def _sync_mount(self, spec: StreamSpec) -> None:
        """Mount or unmount ``/<id>`` on the RTSP server to follow ``spec.serve``."""
        if self.rtsp_server is None:
            return
        if spec.serve:
            self.rtsp_server.add_stream(spec.id)
        else:
            self.rtsp_server.remove_stream(spec.id)

    def _get(self, stream_id: str) -> StreamSupervisor:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise StreamNotFoundError(stream_id) from None

    def _call(self, func: Callable[[], T]) -> T:
        if not self._started:
            raise RuntimeError("engine is not started")
        return self.loop.call_sync(func, timeout=CALL_TIMEOUT)

    def _tick(self) -> bool:
        for supervisor in list(self._streams.values()):
            supervisor._guarded(supervisor.tick)
        try:
            self.recording.tick()
        except Exception:
            log.exception("recording tick failed")
        try:
            self._analyze()
            self.shedder.tick(len(self._streams))
        except Exception:
            log.exception("incident analysis or load shedding failed")
        return True

    def _analyze(self) -> None:
        """Once a second: shared-cause incidents (with group release) and error-rate alarms."""
        now = self._clock()
        if now - self._analyzed_at < 1.0:
            return
        self._analyzed_at = now
        for change in self.correlator.analyze():
            self.incidents.correlation(change)
            if change.kind == "released":
                for stream_id in change.incident.stream_ids:
                    supervisor = self._streams.get(stream_id)
                    if supervisor is not None:
                        supervisor.repace()
        for rate_change in self.error_rates.update():
            self.incidents.error_rate(rate_change)
        for key, rate in self.error_rates.active().items():
            self.incidents.rate_seen(key, rate)

    def _pipeline_of(self, stream_id: str) -> StreamPipeline | None:
        supervisor = self._streams.get(stream_id)
        return supervisor.pipeline if supervisor is not None else None

    def _stop_all(self) -> None:
        for supervisor in list(self._streams.values()):
            supervisor._guarded(lambda s=supervisor: s.stop("engine shutdown"))  # type: ignore[misc]

    def _dispatch_event(self, stream_id: str, event: TransitionEvent) -> None:
        for listener in self._listeners:
            try:
                listener(stream_id, event)
            except Exception:
                log.exception("[%s] event listener failed", stream_id)
