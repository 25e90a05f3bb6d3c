"""The runtime stream set on disk, so a restarted engine comes back as the API left it.

Streams added, changed or removed through the API exist nowhere else, so the state file is
the source of truth once it exists: it holds every spec WITH its credentials (mode 0600)
and each stream's quarantine deadline. It is replaced atomically (temp file, fsync,
rename, fsync of the directory): a crash leaves the old or the new file, never half of
one. A file that cannot be parsed is renamed aside and reported, never silently dropped
or overwritten; the engine then starts from the config.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr, ValidationError

from streamwarden.config import StreamSpec, format_validation_error
from streamwarden.redact import redact
from streamwarden.state import StreamState, TransitionEvent

if TYPE_CHECKING:
    from streamwarden.engine import Engine

__all__ = [
    "STATE_SUFFIX",
    "LoadResult",
    "PersistedStream",
    "StateSaver",
    "StateStore",
    "json_with_secrets",
    "restore_streams",
]

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_SUFFIX = ".state.json"


@dataclass(frozen=True)
class PersistedStream:
    spec: StreamSpec
    quarantined_until: float | None = None  # wall-clock UNIX time: survives a reboot, unlike monotonic
    quarantine_reason: str | None = None


@dataclass(frozen=True)
class LoadResult:
    """What ``StateStore.load`` found. ``streams`` is None when there is no usable state."""

    streams: list[PersistedStream] | None
    problem: str | None = None  # why the file was not used (redacted), for the operator
    set_aside: Path | None = None  # where a corrupt file was moved

    @property
    def specs(self) -> list[StreamSpec] | None:
        return None if self.streams is None else [s.spec for s in self.streams]


class StateFileError(ValueError):
    """The state file's content is not a state document we wrote."""


class StateStore:
    """Loads and atomically saves the state file. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, config_path: str | Path) -> StateStore:
        """``my.yaml`` -> ``my.yaml.state.json`` in the same directory."""
        config_path = Path(config_path)
        return cls(config_path.with_name(config_path.name + STATE_SUFFIX))

    # -- reading -------------------------------------------------------------------------------
    def load(self) -> LoadResult:
        with self._lock:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return LoadResult(streams=None)
            except OSError as exc:
                problem = f"cannot read state file {self.path}: {exc.strerror or exc}"
                log.error("%s; starting from the config", problem)
                return LoadResult(streams=None, problem=problem)
            try:
                streams = _decode(raw)
            except StateFileError as exc:
                return self._set_aside(redact(str(exc)))
            return LoadResult(streams=streams)

    def _set_aside(self, problem: str) -> LoadResult:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        counter = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{counter}")
            counter += 1
        try:
            os.replace(self.path, target)
        except OSError as exc:
            problem = f"{problem}; could not set it aside: {exc.strerror or exc}"
            log.error("state file %s is corrupt (%s); starting from the config", self.path, problem)
            return LoadResult(streams=None, problem=problem)
        log.error(
            "state file %s is corrupt (%s): set aside as %s; starting from the config",
            self.path,
            problem,
            target.name,
        )
        return LoadResult(streams=None, problem=problem, set_aside=target)

    # -- writing -------------------------------------------------------------------------------
    def save(self, streams: Iterable[PersistedStream]) -> None:
        """Replace the file atomically; on any error the previous file is left as it was."""
        document = {
            "version": STATE_VERSION,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "streams": [_encode(stream) for stream in streams],
        }
        data = json.dumps(document, indent=2, default=json_with_secrets, allow_nan=False).encode("utf-8")
        with self._lock:
            directory = self.path.parent
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".{self.path.name}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # a leftover temp file may have had another mode
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Makes the rename itself durable (otherwise a power cut can undo it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_with_secrets(value: object) -> object:
    """json.dumps ``default=``: SecretStr in clear, enums as values. Only for the state file and
    for re-validating a spec in memory; never for output."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"cannot store {type(value).__name__} in the state file")


def _encode(stream: PersistedStream) -> dict[str, Any]:
    quarantine = None
    if stream.quarantined_until is not None:
        quarantine = {"until": stream.quarantined_until, "reason": stream.quarantine_reason}
    return {"spec": stream.spec.model_dump(mode="python"), "quarantine": quarantine}


def _reject_constant(name: str) -> float:
    raise StateFileError(f"invalid number {name}")


def _decode(raw: bytes) -> list[PersistedStream]:
    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise StateFileError(f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise StateFileError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(document, dict):
        raise StateFileError("the document is not a JSON object")
    version = document.get("version")
    if type(version) is not int or version != STATE_VERSION:
        raise StateFileError(f"unsupported version {version!r} (expected {STATE_VERSION})")
    items = document.get("streams")
    if not isinstance(items, list):
        raise StateFileError("'streams' is not a list")
    streams: list[PersistedStream] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "spec" not in item:
            raise StateFileError(f"streams[{index}] is not an object with a 'spec'")
        try:
            spec = StreamSpec.model_validate(item["spec"])
        except ValidationError as exc:
            problems = "; ".join(format_validation_error(exc))
            raise StateFileError(f"streams[{index}].spec: {problems}") from None
        if spec.id in seen:
            raise StateFileError(f"streams[{index}]: duplicate stream id {spec.id!r}")
        seen.add(spec.id)
        until, reason = _decode_quarantine(item.get("quarantine"), index)
        streams.append(PersistedStream(spec=spec, quarantined_until=until, quarantine_reason=reason))
    return streams


def _decode_quarantine(value: object, index: int) -> tuple[float | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise StateFileError(f"streams[{index}].quarantine is not an object")
    until = value.get("until")
    reason = value.get("reason")
    if isinstance(until, bool) or not isinstance(until, int | float) or not math.isfinite(until):
        raise StateFileError(f"streams[{index}].quarantine.until is not a UNIX time")
    if reason is not None and not isinstance(reason, str):
        raise StateFileError(f"streams[{index}].quarantine.reason is not a string")
    return float(until), reason


# -- the engine side -------------------------------------------------------------------------------
def restore_streams(engine: Engine, streams: Sequence[PersistedStream]) -> list[str]:
    """Add each stream (back into quarantine if its deadline is still ahead); returns the ids added.

    One stream that cannot be added is logged and skipped: it must not keep the others down.
    """
    added: list[str] = []
    now = time.time()
    for stream in streams:
        spec = stream.spec
        remaining = 0.0 if stream.quarantined_until is None else stream.quarantined_until - now
        try:
            if remaining > 0 and spec.enabled:
                reason = f"{stream.quarantine_reason or 'quarantined'} (restored)"
                engine.add_stream(spec, quarantined_for=remaining, quarantine_reason=reason)
                log.info("[%s] restored in quarantine for another %.0f s", spec.id, remaining)
            else:
                engine.add_stream(spec)
        except Exception as exc:
            log.error("[%s] could not be restored: %s", spec.id, redact(str(exc)))
            continue
        added.append(spec.id)
    return added


class StateSaver:
    """Writes the engine's current stream set: now (after an API change) or soon (after an event).

    Each save takes a fresh snapshot under the lock, so whichever save runs last writes the
    latest state, whatever order concurrent API calls finish in.
    """

    def __init__(self, engine: Engine, store: StateStore) -> None:
        self.engine = engine
        self.store = store
        self._lock = threading.Lock()
        self._pending = threading.Lock()
        self._worker: threading.Thread | None = None
        self._again = False

    def snapshot(self) -> list[PersistedStream]:
        now = time.time()
        streams = []
        for detail in self.engine.snapshot():
            quarantine = detail.info.get("quarantine") or {}
            until = None
            if quarantine.get("active"):
                until = now + float(quarantine.get("seconds_remaining") or 0.0)
            streams.append(
                PersistedStream(
                    spec=detail.spec, quarantined_until=until, quarantine_reason=quarantine.get("reason")
                )
            )
        return streams

    def save_now(self) -> None:
        with self._lock:
            self.store.save(self.snapshot())

    def save_soon(self) -> None:
        """Save on a worker thread (never on the GLib loop); bursts collapse into one more save."""
        with self._pending:
            if self._worker is not None and self._worker.is_alive():
                self._again = True
                return
            self._worker = threading.Thread(target=self._run, name="state-save", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while True:
            try:
                self.save_now()
            except Exception as exc:  # an engine that is stopping, a full disk: logged, retried next change
                log.error("could not save the state file %s: %s", self.store.path, redact(str(exc)))
            with self._pending:
                if not self._again:
                    self._worker = None
                    return
                self._again = False

    def on_event(self, stream_id: str, event: TransitionEvent) -> None:
        """Engine listener: a stream the engine itself quarantined must stay so after a restart."""
        if event.to_state == StreamState.QUARANTINED:
            self.save_soon()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """For shutdown and tests: waits for a background save in progress."""
        with self._pending:
            worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True
