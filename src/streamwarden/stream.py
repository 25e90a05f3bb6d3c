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

from streamwarden.config import (
    DegradedConfig,
    FileSource,
    HttpSource,
    RecoveryConfig,
    RtspSource,
    StreamSpec,
    Transport,
)
from streamwarden.health import HealthSnapshot, MediaQuality, StreamHealth
from streamwarden.media.loop import LoopThread
from streamwarden.media.pipeline import Branch, DisposalStats, StreamPipeline
from streamwarden.policy.backoff import Backoff
from streamwarden.policy.breaker import CircuitBreaker
from streamwarden.policy.classify import Action, Category, Classification, Classifier, ErrorReport
from streamwarden.policy.correlation import Correlator, keys_for_url
from streamwarden.policy.degradation import DegradationDetector, DegradationThresholds
from streamwarden.policy.error_rate import ErrorRateDetector
from streamwarden.policy.quarantine import Quarantine
from streamwarden.policy.strategies import Strategy, StrategySelector
from streamwarden.policy.token_bucket import TokenBucket
from streamwarden.recording.index import CloseReason
from streamwarden.redact import redact
from streamwarden.state import UP_STATES, StateMachine, StreamState, TransitionEvent

if TYPE_CHECKING:
    from streamwarden.media.recorder_service import RecordingService

log = logging.getLogger(__name__)

# Sources that have no connect timeout of their own still get a first-frame deadline.
DEFAULT_FIRST_FRAME_TIMEOUT = 10.0
QUALITY_CHECK_SECONDS = 1.0  # transport and media quality are judged once a second


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
    # Cross-stream: shared-cause incidents and group pacing; per-stream/per-host error rates.
    correlator: Correlator | None = None
    error_rates: ErrorRateDetector | None = None


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
        self.strategies = self._new_selector(spec.recovery)
        self.shed_paused = False  # stopped by the load shedder, not by the operator
        self.last_strategy: Strategy | None = None
        self.degradation = DegradationDetector(_thresholds(spec.health.degraded), clock)
        self.media = MediaQuality(clock=clock)
        self.degraded_reasons: list[str] = []
        self._quality_checked_at = 0.0
        self._clean_since: float | None = None
        self._next_sample_at = clock() + min(2.0, spec.health.media_sample_interval_seconds)
        self.host_key = keys_for_url(getattr(spec.source, "uri", None)).host
        if services.correlator is not None:
            services.correlator.register(self.id, keys_for_url(getattr(spec.source, "uri", None)))

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

    def shed_pause(self, reason: str) -> None:
        """Stop this stream to relieve resource pressure; ``shed_resume`` brings it back."""
        if self.shed_paused:
            return
        self.shed_paused = True
        self.stop(f"shed under resource pressure: {reason}")

    def shed_resume(self) -> None:
        if not self.shed_paused:
            return
        self.shed_paused = False
        if self.spec.enabled:
            self.restart("resource pressure gone")

    def forget(self) -> None:
        """The stream is removed: leave the engine-wide records."""
        if self._svc.correlator is not None:
            self._svc.correlator.unregister(self.id)
        if self._svc.error_rates is not None:
            self._svc.error_rates.forget(f"stream:{self.id}")

    def repace(self) -> None:
        """The group's probe stream is back: a waiting retry may be due sooner."""
        correlator = self._svc.correlator
        if correlator is None or self._timer is None or self._retry_at is None:
            return
        if self.state != StreamState.BACKOFF:
            return
        remaining = max(0.0, self._retry_at - self._svc.clock())
        paced = correlator.pace(self.id, remaining)
        if paced < remaining - 0.05:
            log.info("[%s] group released: retry in %.2f s instead of %.2f s", self.id, paced, remaining)
            self._schedule_attempt(paced)

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
        if old.health != spec.health:
            self.degradation = DegradationDetector(_thresholds(spec.health.degraded), self._svc.clock)
        live = {"recovery", "health", "priority"}  # applied without touching the pipeline
        media_changed = old.model_dump(exclude=live) != spec.model_dump(exclude=live)
        if media_changed and self.state != StreamState.STOPPED:
            self.restart("spec changed")

    def apply_recovery(self, recovery: RecoveryConfig) -> None:
        self.spec = self.spec.model_copy(update={"recovery": recovery})
        self.backoff.policy = recovery.backoff.to_policy()
        self.breaker.policy = recovery.breaker.to_policy()
        self.quarantine.policy = recovery.quarantine.to_policy()
        stats = self.strategies.stats
        self.strategies = self._new_selector(recovery, stats)

    def tick(self) -> None:
        """Called every engine tick: samples health, detects stalls and slow connects."""
        if self.pipeline is not None:
            self.pipeline.poll_meter()
        self.health.sample()
        now = self._svc.clock()
        state = self.state
        if state in UP_STATES:
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
            self._sample_media(now)
            if now - self._quality_checked_at >= QUALITY_CHECK_SECONDS:
                self._quality_checked_at = now
                self._check_quality(now)
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
        if self.state not in (StreamState.CONNECTING, StreamState.STALLED, *UP_STATES):
            return  # no attempt running: nothing to recover from
        self.health.record_error(verdict.category, verdict.transience)
        self.last_error = verdict
        self.last_error_detail = detail
        self._note_failure(str(verdict.category))
        if self._outage_started is None:
            self._outage_started = self._svc.clock()
            self._outage_category = str(verdict.category)
            self.strategies.begin_outage(str(verdict.category))
        else:
            self.strategies.attempt_failed()  # the strategy of the attempt that just failed
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
            "priority": self.spec.priority,
            "shed_paused": self.shed_paused,
            "degraded_reasons": list(self.degraded_reasons),
            "quality": self.quality(),
            "recovery_strategies": self.strategy_info(),
            "incident": self.incident_info(),
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

    def quality(self) -> dict[str, Any]:
        """Transport (RTP) and media figures behind DEGRADED."""
        transport = None
        if self.pipeline is not None:
            stats = self.pipeline.transport_stats()
            if stats is not None:
                transport = {**stats.as_dict(), "window": self.degradation.window_figures()}
        return {"transport": transport, "media": self.media.as_dict()}

    def strategy_info(self) -> dict[str, Any]:
        selector = self.strategies
        stats = selector.stats
        return {
            "adaptive": self.spec.recovery.adaptive,
            "last": None if self.last_strategy is None else str(self.last_strategy),
            "preferred": {
                category: str(choice)
                for category in stats.categories()
                if (choice := selector.preferred(category, self._applicable())) is not None
            },
            "stats": stats.as_dict(),
        }

    def incident_info(self) -> dict[str, Any] | None:
        correlator = self._svc.correlator
        incident = correlator.incident_for(self.id) if correlator is not None else None
        if incident is None:
            return None
        return {"id": incident.name, "summary": incident.summary, "probe": incident.probe == self.id}

    # -- internals -----------------------------------------------------------------------------
    def _new_selector(self, recovery: RecoveryConfig, stats: Any = None) -> StrategySelector:
        order = {category: [Strategy(s) for s in names] for category, names in recovery.strategies.items()}
        return StrategySelector(order, recovery.strategy_min_trials, stats=stats, clock=self._svc.clock)

    def _applicable(self) -> set[Strategy]:
        strategies = {Strategy.RECONNECT, Strategy.RECONNECT_NOW, Strategy.RESTART}
        source = self.spec.source
        if isinstance(source, RtspSource) and source.transport == Transport.AUTO:
            strategies.add(Strategy.SWITCH_TRANSPORT)
        return strategies

    def _note_failure(self, category: str) -> None:
        if self._svc.correlator is not None:
            self._svc.correlator.record_failure(self.id, category)
        rates = self._svc.error_rates
        if rates is not None:
            rates.record(f"stream:{self.id}")
            if self.host_key is not None:
                rates.record(f"host:{self.host_key}")

    def _sample_media(self, now: float) -> None:
        """Open or close the media sampling window (per-frame Python only while it is open)."""
        pipeline = self.pipeline
        health = self.spec.health
        if pipeline is None or health.media_sample_seconds <= 0 or health.media_sample_interval_seconds <= 0:
            return
        sampler, audio = pipeline.media_sampler, pipeline.audio_sampler
        if sampler.active:
            if sampler.started_at is not None and now - sampler.started_at >= health.media_sample_seconds:
                window = sampler.end(now)
                audio_window = audio.end(now) if audio is not None and not pipeline.audio_dropped else None
                if window is not None:
                    self.media.add_window(window, caps_fps=pipeline.nominal_fps(), audio=audio_window)
        elif now >= self._next_sample_at:
            self._next_sample_at = now + health.media_sample_interval_seconds
            sampler.begin(now)
            if audio is not None and not pipeline.audio_dropped:
                audio.begin(now)

    def _check_quality(self, now: float) -> None:
        """PLAYING <-> DEGRADED from transport figures (RTSP) and media figures (all sources)."""
        config = self.spec.health.degraded
        reasons: list[str] = []
        stats = self.pipeline.transport_stats() if self.pipeline is not None else None
        if stats is not None:
            self.degradation.update(stats.as_dict())
            if self.degradation.degraded:
                reasons.extend(self.degradation.reasons)
        playing_for = 0.0 if self.health.playing_since is None else now - self.health.playing_since
        reasons.extend(
            self.media.reasons(config, self.health.fps(), playing_for, self.spec.health.nominal_fps)
        )
        if reasons:
            self._clean_since = None
            self.degraded_reasons = reasons
            if self.state == StreamState.PLAYING:
                self._move(StreamState.DEGRADED, "; ".join(reasons))
            return
        if self.state != StreamState.DEGRADED:
            self.degraded_reasons = []
            return
        if self._clean_since is None:
            self._clean_since = now
        # The transport detector holds its own verdict too; this hold covers the media figures.
        if now - self._clean_since >= config.clear_after_seconds:
            self.degraded_reasons = []
            self._move(StreamState.PLAYING, "quality back within thresholds")

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
        adaptive = self.spec.recovery.adaptive
        delay = self._adaptive_delay(verdict) if adaptive else self._fixed_delay(verdict)
        if delay is not None and self._svc.correlator is not None:
            delay = self._svc.correlator.pace(self.id, delay)  # a dead shared host: one probes for all
        return delay

    def _adaptive_delay(self, verdict: Classification) -> float | None:
        """The learned strategy picks how (transport) and when (now or after the backoff)."""
        if self.backoff.exhausted():
            return None
        if verdict.action == Action.SWITCH_TRANSPORT:
            self.strategies.hint(Strategy.SWITCH_TRANSPORT)
        elif verdict.action == Action.RETRY_NOW:
            self.strategies.hint(Strategy.RECONNECT_NOW)
        strategy = self.strategies.choose(self._applicable())
        self.last_strategy = strategy
        due = self.backoff.next_delay()
        if strategy == Strategy.RECONNECT_NOW:
            delay = 0.0
        elif strategy == Strategy.SWITCH_TRANSPORT:
            self.transport = Transport.UDP if self.transport == Transport.TCP else Transport.TCP
            delay = 0.0
        elif strategy == Strategy.RESTART:
            self.transport = self._initial_transport()
            delay = due
        else:
            delay = due
        if verdict.action == Action.SLOW_RETRY:
            delay = max(delay, self.backoff.policy.max_seconds)
        transport = f" over {self.transport}" if isinstance(self.spec.source, RtspSource) else ""
        log.info("[%s] recovery strategy %s%s in %.2f s", self.id, strategy, transport, delay)
        return delay

    def _fixed_delay(self, verdict: Classification) -> float | None:
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
        self.degradation.reset()
        self._clean_since = None
        self.degraded_reasons = []
        reason = "first frame"
        if self._outage_started is not None:
            recovery = now - self._outage_started
            self.health.record_recovery(recovery, self._outage_category)
            strategy = f" by {self.last_strategy}" if self.last_strategy is not None else ""
            reason = f"recovered in {recovery:.2f} s{strategy}"
            self.strategies.attempt_succeeded(recovery)
            self._outage_started = None
        if self._svc.correlator is not None:
            self._svc.correlator.record_recovery(self.id)
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


def _thresholds(config: DegradedConfig) -> DegradationThresholds:
    return DegradationThresholds(
        max_loss_percent=config.max_loss_percent,
        max_jitter_ms=config.max_jitter_ms,
        max_late_percent=config.max_late_percent,
        max_rtt_ms=config.max_rtt_ms,
        window_seconds=config.window_seconds,
        clear_after_seconds=config.clear_after_seconds,
    )


def source_kind(spec: StreamSpec) -> str:
    if isinstance(spec.source, FileSource):
        return "file"
    if isinstance(spec.source, HttpSource):
        return "http"
    return "rtsp"


__all__ = ["Category", "EngineServices", "StreamSupervisor", "source_kind"]
