"""Engine-wide incidents: shared-cause failures and error-rate alarms, in one bounded log.

The pure detectors (``policy.correlation``, ``policy.error_rate``) say *that* something opened
or cleared; this keeps what an operator reads: one record per incident with when it opened and
closed, the streams involved and a one-line summary, logged once (WARNING when it opens, INFO
when it clears) instead of one line per failing stream.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamwarden.policy.correlation import Incident, IncidentChange
from streamwarden.policy.error_rate import RateChange

log = logging.getLogger(__name__)


@dataclass
class IncidentRecord:
    id: str  # "inc-7" (shared cause) or "rate-host:10.0.0.5" (error-rate alarm)
    kind: str  # host | network | credential | error_rate
    key: str
    summary: str
    opened_at: float  # UNIX time
    closed_at: float | None = None
    stream_ids: list[str] = field(default_factory=list)
    categories: dict[str, int] = field(default_factory=dict)
    errors_per_minute: float | None = None

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "open": self.open}


class IncidentLog:
    """Open incidents plus the last ``history`` closed ones (loop thread only)."""

    def __init__(self, history: int = 100, wall: Callable[[], float] = time.time) -> None:
        self._open: dict[str, IncidentRecord] = {}
        self._closed: deque[IncidentRecord] = deque(maxlen=history)
        self._wall = wall
        self._rate_serial = 0

    def correlation(self, change: IncidentChange) -> None:
        incident = change.incident
        name = incident.name
        if change.kind == "closed":
            record = self._open.pop(name, None)
            if record is not None:
                record.closed_at = self._wall()
                self._closed.append(record)
                log.info("incident %s cleared: %s", name, record.summary)
            return
        record = self._open.get(name)
        if record is None:
            record = IncidentRecord(name, incident.kind, incident.key, incident.summary, self._wall())
            self._open[name] = record
            log.warning("incident %s: %s (%s)", name, incident.summary, ", ".join(incident.stream_ids))
        _update(record, incident)
        if change.kind == "released":
            log.info("incident %s: probe %s is back, releasing the group", name, incident.probe)

    def error_rate(self, change: RateChange) -> None:
        name = f"rate-{change.key}"
        if change.kind == "cleared":
            record = self._open.pop(name, None)
            if record is not None:
                record.closed_at = self._wall()
                record.errors_per_minute = round(change.rate, 2)
                self._closed.append(record)
                log.info("incident %s cleared: %.1f errors/min", name, change.rate)
            return
        kind, _, key = change.key.partition(":")
        summary = f"{kind} {key}: {change.rate:.1f} errors per minute"
        record = IncidentRecord(name, "error_rate", change.key, summary, self._wall())
        record.errors_per_minute = round(change.rate, 2)
        if kind == "stream":
            record.stream_ids = [key]
        self._open[name] = record
        log.warning("incident %s: %s", name, summary)

    def rate_seen(self, key: str, rate: float) -> None:
        record = self._open.get(f"rate-{key}")
        if record is not None:
            record.errors_per_minute = round(rate, 2)

    def open_incidents(self) -> list[IncidentRecord]:
        return sorted(self._open.values(), key=lambda r: r.opened_at)

    def all(self) -> list[dict[str, Any]]:
        """Open ones first (oldest first), then closed ones (newest first)."""
        return [r.as_dict() for r in self.open_incidents()] + [r.as_dict() for r in reversed(self._closed)]


def _update(record: IncidentRecord, incident: Incident) -> None:
    record.summary = incident.summary
    record.stream_ids = list(incident.stream_ids)
    record.categories = dict(incident.categories)
