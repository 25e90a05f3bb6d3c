"""The segment index: one SQLite row per finished, validated segment file.

SQLite in WAL mode lets the API read while the recorder writes, and survives a SIGKILL
mid-transaction. The index is a cache of what is on disk, never the other way round: a
lost or corrupt database is set aside and rebuilt from the files (see ``Reconciler`` in
``streamwarden.media.recorder_service``), and rows whose file vanished are dropped.
One connection guarded by a lock: writes come from one worker thread, reads from anywhere.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Any

__all__ = ["CloseReason", "Gap", "SegmentIndex", "SegmentRecord", "to_epoch"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    path TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL NOT NULL,
    duration REAL NOT NULL,
    bytes INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    close_reason TEXT NOT NULL,
    format TEXT NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_by_stream_time ON segments (stream_id, start_time);
"""
_COLUMNS = (
    "path",
    "stream_id",
    "start_time",
    "end_time",
    "duration",
    "bytes",
    "frames",
    "close_reason",
    "format",
    "indexed_at",
)


class CloseReason(StrEnum):
    """Why a segment was closed (a column of the index)."""

    ROTATION = "rotation"  # segment_seconds or segment_bytes reached
    OUTAGE = "outage"  # the source failed; the next attempt opens a new segment
    SHUTDOWN = "shutdown"  # the engine stopped
    STOPPED = "stopped"  # recording or the stream stopped or restarted by the operator
    PAUSED = "paused"  # the disk guard paused recording (free space below the minimum)
    ERROR = "error"  # a write failure ended it; what reached the disk was kept
    CRASH_RECOVERED = "crash_recovered"  # found in progress at start-up and made playable
    REINDEXED = "reindexed"  # found on disk without a row (lost index): reason unknown


@dataclass(frozen=True)
class SegmentRecord:
    """One finished segment. Times are UTC epoch seconds."""

    stream_id: str
    path: str
    start_time: float
    end_time: float
    duration: float
    bytes: int
    frames: int
    close_reason: str
    format: str
    indexed_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["start"] = _iso(self.start_time)
        data["end"] = _iso(self.end_time)
        return data


@dataclass(frozen=True)
class Gap:
    """Time between two consecutive segments of a stream with nothing recorded."""

    stream_id: str
    start_time: float  # end of the earlier segment
    end_time: float  # start of the later one
    before: str  # path of the earlier segment
    after: str

    @property
    def seconds(self) -> float:
        return self.end_time - self.start_time


def to_epoch(value: datetime | float | None) -> float | None:
    """Accept datetimes (naive ones are UTC) or epoch seconds."""
    if value is None or isinstance(value, int | float):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


class SegmentIndex:
    """Thread-safe access to one index database."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.created = not self.path.exists()  # True: nothing known yet, rebuild from disk
        self.set_aside: Path | None = None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("segment index %s is unreadable (%s): set aside as %s", self.path, exc, self.set_aside)
            self.path.rename(self.set_aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.created = True
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("SELECT count(*) FROM segments").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writes ----------------------------------------------------------------------------
    def add(self, record: SegmentRecord, *, replace: bool = True) -> bool:
        """Insert a row; ``replace=False`` keeps an existing row (reconcile never overrides)."""
        if not record.indexed_at:
            record = SegmentRecord(**{**asdict(record), "indexed_at": time.time()})
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        values = tuple(getattr(record, column) for column in _COLUMNS)
        with self._lock:
            cursor = self._conn.execute(
                f"{verb} INTO segments ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                values,
            )
            return cursor.rowcount > 0

    def remove(self, paths: Iterable[str]) -> int:
        with self._lock:
            cursor = self._conn.executemany("DELETE FROM segments WHERE path = ?", [(p,) for p in paths])
            return cursor.rowcount

    # -- reads -----------------------------------------------------------------------------
    def segments(
        self,
        stream_id: str | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
    ) -> list[SegmentRecord]:
        """Segments overlapping [since, until], oldest first (all streams when stream_id is None)."""
        clauses: list[str] = []
        args: list[Any] = []
        if stream_id is not None:
            clauses.append("stream_id = ?")
            args.append(stream_id)
        start = to_epoch(since)
        end = to_epoch(until)
        if start is not None:
            clauses.append("end_time >= ?")
            args.append(start)
        if end is not None:
            clauses.append("start_time <= ?")
            args.append(end)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM segments {where} ORDER BY start_time, path", args
            ).fetchall()
        return [SegmentRecord(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    def get(self, path: str) -> SegmentRecord | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM segments WHERE path = ?", (path,)
            ).fetchone()
        return None if row is None else SegmentRecord(**dict(zip(_COLUMNS, row, strict=True)))

    def paths(self, stream_id: str | None = None) -> set[str]:
        with self._lock:
            if stream_id is None:
                rows = self._conn.execute("SELECT path FROM segments").fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT path FROM segments WHERE stream_id = ?", (stream_id,)
                ).fetchall()
        return {row[0] for row in rows}

    def gaps(
        self,
        stream_id: str,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        min_seconds: float = 1.0,
    ) -> list[Gap]:
        """Holes of at least ``min_seconds`` between consecutive segments (outages, pauses)."""
        segments = self.segments(stream_id, since, until)
        out = []
        for before, after in pairwise(segments):
            if after.start_time - before.end_time >= min_seconds:
                out.append(Gap(stream_id, before.end_time, after.start_time, before.path, after.path))
        return out
