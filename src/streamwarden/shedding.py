"""Graceful degradation under resource pressure: apply the planner's steps to real streams.

``policy.pressure.ShedPlanner`` decides, purely, which stream moves to which level; this module
measures the process (``resources.ProcessSampler``) and carries the steps out on the engine's
loop thread, in the documented order for the lowest priority first:

1. CLIENTS: the stream's RTSP re-serve refuses and disconnects its clients (ingest and recording go on);
2. RECORDING: its recorder closes the current segment and pauses;
3. PAUSED: the stream itself stops (state STOPPED, reason "shed: ...").

Restoring runs the same steps backwards, highest priority first, once every figure is below
``clear_ratio`` of its limit.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from streamwarden.config import LimitsConfig
from streamwarden.policy.pressure import (
    ResourceLimits,
    ResourceSample,
    ShedAction,
    ShedLevel,
    ShedPlanner,
    StreamLoad,
)
from streamwarden.resources import ProcessSampler

log = logging.getLogger(__name__)


class Sheddable(Protocol):
    """What the shedder needs of the engine (loop thread)."""

    def shed_loads(self) -> list[StreamLoad]: ...

    def apply_shed(self, stream_id: str, level: ShedLevel, reason: str | None) -> None: ...


def limits_of(config: LimitsConfig) -> ResourceLimits:
    memory = config.max_memory_mb
    return ResourceLimits(
        max_rss_bytes=None if memory is None else max(1, int(memory * 1024 * 1024)),
        max_cpu_percent=config.max_cpu_percent,
        max_open_fds=config.max_open_fds,
        max_threads=config.max_threads,
        max_streams=config.max_streams,
        clear_ratio=config.clear_ratio,
    )


class LoadShedder:
    def __init__(self, config: LimitsConfig, target: Sheddable, clock: Callable[[], float]) -> None:
        self._target = target
        self._clock = clock
        self._sampler = ProcessSampler(clock)
        self.levels: dict[str, ShedLevel] = {}
        self.reasons: dict[str, str] = {}
        self.last_sample: ResourceSample | None = None
        self.actions_total = 0
        self.history: deque[dict[str, Any]] = deque(maxlen=200)
        self._checked_at = 0.0
        self.configure(config)

    def configure(self, config: LimitsConfig) -> None:
        self.config = config
        self.planner = ShedPlanner(limits_of(config), config.step_seconds, self._clock)

    @property
    def watching(self) -> bool:
        c = self.config
        return any(v is not None for v in (c.max_memory_mb, c.max_cpu_percent, c.max_open_fds, c.max_threads))

    def tick(self, streams: int) -> list[ShedAction]:
        """Sample every ``check_interval_seconds`` and apply at most one step (loop thread)."""
        now = self._clock()
        if not self.watching and not any(self.levels.values()):
            return []
        if now - self._checked_at < self.config.check_interval_seconds:
            return []
        self._checked_at = now
        sample = self._sampler.sample(streams)
        self.last_sample = sample
        actions = self.planner.plan(sample, self._target.shed_loads())
        for action in actions:
            self._apply(action)
        return actions

    def admit(self, streams: int, priority: int) -> str | None:
        """Why a new stream must be refused now, or None."""
        sample = self._sampler.sample(streams) if self.watching else ResourceSample(streams=streams)
        return self.planner.admit(sample, priority)

    def level(self, stream_id: str) -> ShedLevel:
        return self.levels.get(stream_id, ShedLevel.NONE)

    def forget(self, stream_id: str) -> None:
        self.levels.pop(stream_id, None)
        self.reasons.pop(stream_id, None)

    def describe(self) -> dict[str, Any]:
        sample = self.last_sample
        return {
            "limits": self.config.model_dump(),
            "under_pressure": self.planner.under_pressure,
            "pressure": [] if sample is None else self.planner.pressure(sample),
            "sample": None if sample is None else sample.__dict__,
            "shed": {
                sid: {"level": level.name.lower(), "reason": self.reasons.get(sid)}
                for sid, level in self.levels.items()
                if level > ShedLevel.NONE
            },
            "actions_total": self.actions_total,
        }

    def _apply(self, action: ShedAction) -> None:
        stream_id, level = action.stream_id, action.to_level
        verb = "shedding" if action.shedding else "restoring"
        log.warning(
            "[%s] %s: %s -> %s (%s)", stream_id, verb, action.from_level.name, level.name, action.reason
        )
        self.actions_total += 1
        self.history.append(
            {
                "at": time.time(),
                "stream_id": stream_id,
                "from": action.from_level.name.lower(),
                "level": level.name.lower(),
                "shedding": action.shedding,
                "reason": action.reason,
            }
        )
        reason = action.reason if level > ShedLevel.NONE else None
        self._target.apply_shed(stream_id, level, reason)
        if level > ShedLevel.NONE:
            self.levels[stream_id] = level
            self.reasons[stream_id] = action.reason
        else:
            self.forget(stream_id)
