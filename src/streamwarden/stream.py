"""The supervisor of one stream: its state machine, recovery decisions and health.

It lives on the engine's loop thread (every method here is called there) and owns at
most one ``StreamPipeline`` at a time. Policy comes from the pure ``policy`` package;
this module only wires policy decisions to pipeline attempts.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gi.repository import GLib

from streamwarden.config import FileSource, HttpSource, RecoveryConfig, RtspSource, StreamSpec, Transport
from streamwarden.health import HealthSnapshot, StreamHealth
from streamwarden.media.loop import LoopThread
from streamwarden.media.pipeline import Branch, DisposalStats, StreamPipeline
from streamwarden.policy.backoff import Backoff
from streamwarden.policy.breaker import CircuitBreaker
from streamwarden.policy.classify import Action, Category, Classification, Classifier, ErrorReport
from streamwarden.policy.quarantine import Quarantine
from streamwarden.policy.token_bucket import TokenBucket
from streamwarden.recording.index import CloseReason
from streamwarden.redact import redact
from streamwarden.state import StateMachine, StreamState, TransitionEvent

if TYPE_CHECKING:
    from streamwarden.media.recorder_service import RecordingService

log = logging.getLogger(__name__)

# Sources that have no connect timeout of their own still get a first-frame deadline.
DEFAULT_FIRST_FRAME_TIMEOUT = 10.0


@dataclass
class EngineServices:
    """What every supervisor of one engine shares."""

    loop: LoopThread
    classifier: Classifier
    budget: TokenBucket
    disposal: DisposalStats
    teardown_timeout: float
    event_ring_size: int
    clock: Callable[[], float] = time.monotonic
    rng: random.Random | None = None
    on_event: Callable[[str, TransitionEvent], None] | None = None
    # Each returns the branch (recorder, RTSP re-serve, ...) a spec needs, or None.
    branch_factories: list[Callable[[StreamSpec], Branch | None]] = field(default_factory=list)
    # The RTSP server's health of a served stream (None: not mounted), readable from any thread.
    serve_status: Callable[[str], dict[str, Any] | None] | None = None
    # Per-stream recorders (state across attempts, segment index); None: recording not wired.
    recording: RecordingService | None = None


class StreamSupervisor:
    def __init__(self, spec: StreamSpec, services: EngineServices) -> None:
        self.spec = spec
        self.id = spec.id
        self._svc = services
        clock = services.clock
        self.machine = StateMachine(services.event_ring_size)
        self.health = StreamHealth(clock=clock)
        self.backoff = Backoff(spec.recovery.backoff.to_policy(), services.rng)
        self.breaker = CircuitBreaker(spec.recovery.breaker.to_policy(), clock)
        self.quarantine = Quarantine(spec.recovery.quarantine.to_policy(), clock)
        self.pipeline: StreamPipeline | None = None
        self._generation = 0
        self._timer: GLib.Source | None = None
        self._retry_at: float | None = None
        self._outage_started: float | None = None
        self._outage_category = "unknown"  # category of the failure that started the outage
        self._attempt_started: float = 0.0
        self.transport = self._initial_transport()
        self.last_error: Classification | None = None
        self.last_error_detail: str | None = None

    # -- public (loop thread) ------------------------------------------------------------------
    @property
    def state(self) -> StreamState:
        return self.machine.state

    def start(self) -> None:
        if not self.spec.enabled:
            self._move(StreamState.STOPPED, "disabled in config")
            return
        self._attempt()

    def stop(self, reason: str = "stopped by operator") -> None:
        self._cancel_timer()
        closing = CloseReason.SHUTDOWN if reason == "engine shutdown" else CloseReason.STOPPED
        self._teardown(finalize_recording=True, close_reason=closing)
        if self.state != StreamState.STOPPED:
            self._move(StreamState.STOPPED, reason)

    def restart(self, reason: str = "restart requested") -> None:
        """Fresh attempt now, counters kept (operator action or changed spec)."""
        self._cancel_timer()
        self._teardown(finalize_recording=True, close_reason=CloseReason.STOPPED)
        self.transport = self._initial_transport()
        if self.state != StreamState.STARTING:
            self._move(StreamState.STARTING, reason)
        self._attempt()

    def resume(self) -> None:
        """Operator takes the source out of quarantine (or out of FAILED) and retries now."""
        self.quarantine.release()
        self.breaker.reset()
        self.backoff.reset()
        self.restart("resumed by operator")

    def update_spec(self, spec: StreamSpec) -> None:
        """Apply a new spec; only a changed source or sinks needs a new pipeline."""
        old = self.spec
        self.spec = spec
        self.apply_recovery(spec.recovery)
        if not spec.enabled:
            if self.state != StreamState.STOPPED:
                self.stop("disabled")
            return
        if not old.enabled:
            self.restart("enabled")
            return
        media_changed = old.model_dump(exclude={"recovery"}) != spec.model_dump(exclude={"recovery"})
        if media_changed and self.state != StreamState.STOPPED:
            self.restart("spec changed")

    def apply_recovery(self, recovery: RecoveryConfig) -> None:
        self.spec = self.spec.model_copy(update={"recovery": recovery})
        self.backoff.policy = recovery.backoff.to_policy()
        self.breaker.policy = recovery.breaker.to_policy()
        self.quarantine.policy = recovery.quarantine.to_policy()

    def tick(self) -> None:
        """Called every engine tick: samples health, detects stalls and slow connects."""
        if self.pipeline is not None:
            self.pipeline.poll_meter()
        self.health.sample()
        now = self._svc.clock()
        state = self.state
        if state == StreamState.PLAYING:
            last = self.health.last_frame_at
            stall = self.spec.recovery.stall_timeout_seconds
            if last is not None and now - last > stall:
                self._move(
                    StreamState.STALLED, f"no frame for {now - last:.1f} s (stall_timeout {stall:g} s)"
                )
                self.failure(ErrorReport(kind="stall", message=f"no frame for {now - last:.1f} s"))
                return
            if self.health.playing_since is not None and self.backoff.attempts:
                self.backoff.note_stable(now - self.health.playing_since)
        elif state == StreamState.CONNECTING:
            limit = self._first_frame_timeout()
            if now - self._attempt_started > limit:
                self.failure(ErrorReport(kind="timeout", message=f"no first frame within {limit:g} s"))

    def health_snapshot(self) -> HealthSnapshot:
        """Figures as of now: the C frame counters are read first, not at the last tick."""
        if self.pipeline is not None:
            self.pipeline.poll_meter()
        return self.health.snapshot()

    def failure(self, report: ErrorReport, generation: int | None = None) -> None:
        """Everything that goes wrong ends up here (bus errors, stalls, our own exceptions)."""
        if generation is not None and generation != self._generation:
            return  # a late message from a pipeline already thrown away
        verdict = self._svc.classifier.classify(report)
        detail = redact(f"{report.element}: {report.message}" if report.element else report.message)
        if verdict.action == Action.IGNORE:
            log.debug("[%s] ignored %s %s: %s", self.id, report.kind, verdict.rule, detail)
            self.health.record_error(verdict.category, verdict.transience)
            return
        if self.state not in (StreamState.CONNECTING, StreamState.PLAYING, StreamState.STALLED):
            return  # no attempt running: nothing to recover from
        self.health.record_error(verdict.category, verdict.transience)
        self.last_error = verdict
        self.last_error_detail = detail
        if self._outage_started is None:
            self._outage_started = self._svc.clock()
            self._outage_category = str(verdict.category)
        self.health.playing_since = None
        self._teardown(finalize_recording=True)
        reason = f"{verdict.category}: {verdict.reason} ({detail})"
        log.warning("[%s] failure: %s [%s, %s]", self.id, reason, verdict.transience, verdict.action)

        if verdict.action == Action.STOP:
            self._move(StreamState.FAILED, reason, verdict)
            return
        if self.breaker.record_failure() and self.quarantine.record_trip():
            self.quarantine.reason = reason
            self._enter_quarantine(reason, verdict)
            return
        if verdict.action == Action.QUARANTINE:
            self.quarantine.reason = reason
            self._enter_quarantine(reason, verdict)
            return
        delay = self._delay_for(verdict)
        if delay is None:
            self._move(
                StreamState.FAILED, f"gave up after {self.backoff.attempts} attempts: {reason}", verdict
            )
            return
        self._move(StreamState.BACKOFF, f"{reason}; retry in {delay:.2f} s", verdict)
        self._schedule_attempt(delay)

    def describe(self) -> dict[str, Any]:
        breaker_state = self.breaker.state
        return {
            "state": str(self.state),
            "reason": redact(self.machine.reason),
            "since_seconds": round(time.monotonic() - self.machine.since, 3),
            "transport": str(self.transport) if isinstance(self.spec.source, RtspSource) else None,
            "retry_in_seconds": (
                None if self._retry_at is None else round(max(0.0, self._retry_at - self._svc.clock()), 3)
            ),
            "backoff_attempts": self.backoff.attempts,
            "breaker": {
                "state": str(breaker_state),
                "consecutive_failures": self.breaker.consecutive_failures,
                "trips": self.breaker.trips,
                "seconds_until_half_open": round(self.breaker.seconds_until_half_open(), 3),
            },
            "quarantine": {
                "active": self.quarantine.active,
                "reason": self.quarantine.reason,
                "seconds_remaining": round(self.quarantine.seconds_remaining(), 3),
            },
            "last_error": None
            if self.last_error is None
            else {
                "category": str(self.last_error.category),
                "transience": str(self.last_error.transience),
                "action": str(self.last_error.action),
                "reason": self.last_error.reason,
                "detail": self.last_error_detail,
            },
            "recorder": self._recorder_status(),
            "server": self._server_status(),
        }

    # -- internals -----------------------------------------------------------------------------
    def _server_status(self) -> dict[str, Any] | None:
        if not self.spec.serve:
            return None
        status = self._svc.serve_status(self.id) if self._svc.serve_status is not None else None
        return status or {"active": False, "clients": 0, "reason": "no RTSP server configured"}

    def _recorder_status(self) -> dict[str, Any] | None:
        if self.spec.record is None:
            return None
        if self._svc.recording is not None:
            return self._svc.recording.describe(self.spec)
        return {
            "active": self.pipeline is not None
            and self.state in (StreamState.PLAYING, StreamState.CONNECTING),
            "dir": self.spec.record.dir,
            "format": str(self.spec.record.format),
        }

    def _initial_transport(self) -> Transport:
        source = self.spec.source
        if isinstance(source, RtspSource) and source.transport == Transport.UDP:
            return Transport.UDP
        return Transport.TCP

    def _first_frame_timeout(self) -> float:
        source = self.spec.source
        if isinstance(source, RtspSource | HttpSource):
            # rtspsrc's own UDP timeout is 5 s before it gives up on UDP; leave it room.
            return source.connect_timeout_seconds + (5.0 if self.transport == Transport.UDP else 0.0)
        return DEFAULT_FIRST_FRAME_TIMEOUT

    def _delay_for(self, verdict: Classification) -> float | None:
        if verdict.action == Action.SWITCH_TRANSPORT:
            source = self.spec.source
            if isinstance(source, RtspSource) and source.transport == Transport.AUTO:
                self.transport = Transport.UDP if self.transport == Transport.TCP else Transport.TCP
                log.info("[%s] switching RTSP transport to %s", self.id, self.transport)
                return 0.0
        if self.backoff.exhausted():
            return None
        delay = self.backoff.next_delay()
        if verdict.action == Action.RETRY_NOW:
            return 0.0
        if verdict.action == Action.SLOW_RETRY:
            return self.backoff.policy.max_seconds
        return delay

    def _enter_quarantine(self, reason: str, verdict: Classification | None = None) -> None:
        remaining = self.quarantine.seconds_remaining()
        self._move(StreamState.QUARANTINED, f"quarantined for {remaining:.0f} s: {reason}", verdict)
        self._schedule_attempt(remaining)

    def _schedule_attempt(self, delay: float) -> None:
        self._cancel_timer()
        self._retry_at = self._svc.clock() + delay

        def _fire() -> bool:
            self._timer = None
            self._retry_at = None
            self._guarded(self._attempt)
            return False

        self._timer = self._svc.loop.timeout(delay, _fire)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.destroy()
            self._timer = None
        self._retry_at = None

    def _attempt(self) -> None:
        if self.state in (StreamState.STOPPED, StreamState.FAILED):
            return
        if self.quarantine.active:
            if self.state != StreamState.QUARANTINED:
                self._enter_quarantine(self.quarantine.reason or "quarantined")
            else:
                self._schedule_attempt(self.quarantine.seconds_remaining())
            return
        if self.state == StreamState.QUARANTINED:
            self._move(StreamState.STARTING, "quarantine expired")
        budget_wait = self._svc.budget.seconds_until_available()
        if budget_wait > 0 or not self._svc.budget.try_acquire():
            self._move(StreamState.BACKOFF, "waiting for the global reconnect budget")
            self._schedule_attempt(max(budget_wait, 0.05))
            return
        if not self.breaker.allow_attempt():
            wait = max(self.breaker.seconds_until_half_open(), 0.05)
            self._move(StreamState.BACKOFF, f"circuit breaker open; trial in {wait:.1f} s")
            self._schedule_attempt(wait)
            return
        self._generation += 1
        generation = self._generation
        meter = self.health.new_meter()
        try:
            branches = [b for make in self._svc.branch_factories if (b := make(self.spec)) is not None]
            pipeline = StreamPipeline(
                self.spec,
                loop=self._svc.loop,
                meter=meter,
                on_first_frame=lambda: self._guarded(lambda: self._first_frame(generation)),
                on_failure=lambda report: self._guarded(lambda: self.failure(report, generation)),
                transport=self.transport,
                generation=generation,
                branches=branches,
            )
        except Exception as exc:
            self._move(StreamState.CONNECTING, "building pipeline")
            self.failure(ErrorReport(kind="internal", message=f"cannot build pipeline: {exc}"))
            return
        self.pipeline = pipeline
        self._attempt_started = self._svc.clock()
        transport = f" over {self.transport}" if isinstance(self.spec.source, RtspSource) else ""
        self._move(StreamState.CONNECTING, f"attempt {self.health.attempts_total}{transport}")
        if not pipeline.start():
            report = pipeline.start_error or ErrorReport(kind="error", message="pipeline refused to start")
            self.failure(report, generation)

    def _first_frame(self, generation: int) -> None:
        if generation != self._generation or self.state != StreamState.CONNECTING:
            return
        now = self._svc.clock()
        self.breaker.record_success()
        self.health.playing_since = now
        reason = "first frame"
        if self._outage_started is not None:
            recovery = now - self._outage_started
            self.health.record_recovery(recovery, self._outage_category)
            reason = f"recovered in {recovery:.2f} s"
            self._outage_started = None
        self._move(StreamState.PLAYING, reason)

    def _teardown(self, finalize_recording: bool, close_reason: CloseReason = CloseReason.OUTAGE) -> None:
        pipeline = self.pipeline
        if pipeline is None:
            return
        if self._svc.recording is not None:
            # Before disposal: the recording's last segment is labelled with why it closed.
            self._svc.recording.attempt_ending(self.id, pipeline, close_reason)
        self.pipeline = None
        self._generation += 1  # anything still in flight from it is now stale
        pipeline.poll_meter()  # the frames since the last tick count too
        self.health.close_meter()
        pipeline.dispose(self._svc.disposal, self._svc.teardown_timeout, finalize_recording)

    def _guarded(self, func: Callable[[], None]) -> None:
        """An exception in one stream's callback becomes a failure of that stream only."""
        try:
            func()
        except Exception as exc:
            log.exception("[%s] internal error", self.id)
            try:
                self.failure(ErrorReport(kind="internal", message=f"{type(exc).__name__}: {exc}"))
            except Exception:
                log.exception("[%s] could not recover from an internal error", self.id)

    def _move(self, to_state: StreamState, reason: str, verdict: Classification | None = None) -> None:
        event = self.machine.move(
            to_state,
            redact(reason),
            category=str(verdict.category) if verdict else None,
            transience=str(verdict.transience) if verdict else None,
        )
        level = logging.WARNING if to_state in (StreamState.FAILED, StreamState.QUARANTINED) else logging.INFO
        log.log(level, "[%s] %s -> %s: %s", self.id, event.from_state, event.to_state, event.reason)
        if self._svc.on_event is not None:
            self._svc.on_event(self.id, event)


def source_kind(spec: StreamSpec) -> str:
    if isinstance(spec.source, FileSource):
        return "file"
    if isinstance(spec.source, HttpSource):
        return "http"
    return "rtsp"


__all__ = ["Category", "EngineServices", "StreamSupervisor", "source_kind"]
