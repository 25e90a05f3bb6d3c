"""Reads and one write of engine internals that ``Engine`` has no public method for yet.

The control plane (metrics, persisted state) needs, in ONE loop hop, every stream's info
together with its unredacted spec and its error counts by (category, transience), and it
needs to put a restored stream back into quarantine. Until the engine offers that, this
module is the single place that reaches into ``Engine._streams``: when the engine grows
``snapshot()`` / a quarantine argument on ``add_stream``, only this file changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamwarden.config import StreamSpec
from streamwarden.state import StreamState

if TYPE_CHECKING:
    from streamwarden.engine import Engine

__all__ = ["StreamDetail", "restore_quarantined", "stream_details"]

SNAPSHOT_TIMEOUT = 5.0


@dataclass(frozen=True)
class StreamDetail:
    """One stream at one instant: ``Engine.info`` plus what info leaves out."""

    info: dict[str, Any]  # exactly Engine.info(id): spec redacted
    spec: StreamSpec  # unredacted: for the state file only, never for output
    errors_by_key: dict[tuple[str, str], int] = field(default_factory=dict)  # (category, transience)

    @property
    def id(self) -> str:
        return str(self.info["id"])


def stream_details(engine: Engine, timeout: float = SNAPSHOT_TIMEOUT) -> list[StreamDetail]:
    """Every stream's detail, taken in one call on the loop thread (a consistent snapshot)."""

    def _collect() -> list[StreamDetail]:
        return [
            StreamDetail(
                info=engine._info(supervisor),
                spec=supervisor.spec,
                errors_by_key={(str(c), str(t)): n for (c, t), n in supervisor.health.errors_by_key.items()},
            )
            for supervisor in engine._streams.values()
        ]

    if not engine.loop.running:
        raise RuntimeError("engine is not started")
    return engine.loop.call_sync(_collect, timeout=timeout)


def restore_quarantined(engine: Engine, spec: StreamSpec, seconds: float, reason: str) -> None:
    """Add ``spec`` straight into QUARANTINED for ``seconds`` without a connection attempt.

    Added disabled (STOPPED, nothing built), quarantine set, then enabled: the supervisor's
    own attempt path sees the active quarantine and parks the stream with its retry timer.
    """

    def _restore() -> None:
        engine.add_stream(spec.model_copy(update={"enabled": False}))
        supervisor = engine._streams[spec.id]
        quarantine = supervisor.quarantine
        quarantine._until = supervisor._svc.clock() + seconds
        quarantine.reason = f"{reason} (restored)"
        supervisor.update_spec(spec)
        if supervisor.state == StreamState.STOPPED:  # update_spec restarts only a running stream
            supervisor.restart("restored from the state file")

    engine.loop.call_sync(_restore, timeout=SNAPSHOT_TIMEOUT)
