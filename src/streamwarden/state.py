"""Stream states and the bounded record of transitions between them.

Operators debug a flapping camera from this record, so every transition carries a time,
a reason and (for failures) the error class that caused it.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class StreamState(StrEnum):
    STARTING = "STARTING"  # added, first attempt not yet made
    CONNECTING = "CONNECTING"  # pipeline built, waiting for the first frame
    PLAYING = "PLAYING"  # frames flowing
    DEGRADED = "DEGRADED"  # frames flowing, but loss, jitter, frame rate or timestamps are bad
    STALLED = "STALLED"  # connected but no frame for stall_timeout: about to be rebuilt
    BACKOFF = "BACKOFF"  # waiting before the next attempt (backoff, open breaker or budget)
    QUARANTINED = "QUARANTINED"  # failed too often: not retried until resumed or timer expiry
    STOPPED = "STOPPED"  # stopped by the operator or engine shutdown
    FAILED = "FAILED"  # fatal error or attempts exhausted: needs the operator


# States in which frames flow: a DEGRADED stream is up (recorded, served), just not well.
UP_STATES: frozenset[StreamState] = frozenset({StreamState.PLAYING, StreamState.DEGRADED})

# Which states may follow which: anything else is a bug and raises.
ALLOWED: dict[StreamState, frozenset[StreamState]] = {
    StreamState.STARTING: frozenset(
        {StreamState.CONNECTING, StreamState.BACKOFF, StreamState.QUARANTINED, StreamState.STOPPED}
    ),
    StreamState.CONNECTING: frozenset(
        {
            StreamState.PLAYING,
            StreamState.BACKOFF,
            StreamState.QUARANTINED,
            StreamState.FAILED,
            StreamState.STOPPED,
            StreamState.STARTING,
        }
    ),
    StreamState.PLAYING: frozenset(
        {
            StreamState.DEGRADED,
            StreamState.STALLED,
            StreamState.BACKOFF,
            StreamState.QUARANTINED,
            StreamState.FAILED,
            StreamState.STOPPED,
            StreamState.STARTING,
        }
    ),
    StreamState.DEGRADED: frozenset(
        {
            StreamState.PLAYING,
            StreamState.STALLED,
            StreamState.BACKOFF,
            StreamState.QUARANTINED,
            StreamState.FAILED,
            StreamState.STOPPED,
            StreamState.STARTING,
        }
    ),
    StreamState.STALLED: frozenset(
        {StreamState.BACKOFF, StreamState.QUARANTINED, StreamState.FAILED, StreamState.STOPPED}
    ),
    StreamState.BACKOFF: frozenset(
        {
            StreamState.CONNECTING,
            StreamState.BACKOFF,
            StreamState.QUARANTINED,
            StreamState.FAILED,
            StreamState.STOPPED,
            StreamState.STARTING,
        }
    ),
    StreamState.QUARANTINED: frozenset({StreamState.STARTING, StreamState.STOPPED}),
    StreamState.STOPPED: frozenset({StreamState.STARTING}),
    StreamState.FAILED: frozenset({StreamState.STARTING, StreamState.STOPPED}),
}


@dataclass(frozen=True)
class TransitionEvent:
    at: float  # wall-clock UNIX time
    monotonic: float
    from_state: StreamState
    to_state: StreamState
    reason: str
    category: str | None = None
    transience: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["from_state"] = str(self.from_state)
        data["to_state"] = str(self.to_state)
        return data


class IllegalTransitionError(RuntimeError):
    pass


class StateMachine:
    """Holds the current state, a bounded event ring and per-transition counts."""

    def __init__(self, ring_size: int = 200) -> None:
        self.state = StreamState.STARTING
        self.since = time.monotonic()
        self.reason = "added"
        self.events: deque[TransitionEvent] = deque(maxlen=ring_size)
        self.counts: Counter[tuple[StreamState, StreamState]] = Counter()

    def move(
        self,
        to_state: StreamState,
        reason: str,
        category: str | None = None,
        transience: str | None = None,
    ) -> TransitionEvent:
        if to_state not in ALLOWED[self.state]:
            raise IllegalTransitionError(f"{self.state} -> {to_state} ({reason})")
        event = TransitionEvent(
            at=time.time(),
            monotonic=time.monotonic(),
            from_state=self.state,
            to_state=to_state,
            reason=reason,
            category=category,
            transience=transience,
        )
        self.events.append(event)
        self.counts[(self.state, to_state)] += 1
        self.state = to_state
        self.since = event.monotonic
        self.reason = reason
        return event
