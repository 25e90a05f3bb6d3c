"""Retention and the free-space guard, as pure functions over index rows and disk figures.

Retention works on closed, indexed segments only, so the file being written can never be
chosen; callers also pass the paths that are open right now as ``protected``. Per-stream
limits run first, then the global ones across every stream, oldest first everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from streamwarden.recording.index import SegmentRecord

__all__ = [
    "RESUME_FACTOR",
    "DiskThreshold",
    "FreeSpace",
    "RetentionLimits",
    "disk_verdict",
    "free_space",
    "plan_deletions",
]

# A paused recorder resumes only once free space is 10 % above the threshold, so a recorder
# hovering at the limit does not flap between paused and recording every check.
RESUME_FACTOR = 1.1


@dataclass(frozen=True)
class RetentionLimits:
    max_age_seconds: float | None = None
    max_total_bytes: int | None = None

    @property
    def active(self) -> bool:
        return self.max_age_seconds is not None or self.max_total_bytes is not None


def plan_deletions(
    segments: Sequence[SegmentRecord],
    *,
    now: float,
    per_stream: Mapping[str, RetentionLimits],
    global_limits: RetentionLimits,
    protected: Collection[str] = (),
) -> list[tuple[SegmentRecord, str]]:
    """The segments to delete, each with the limit that chose it, oldest first."""
    keep = sorted((s for s in segments if s.path not in protected), key=lambda s: (s.end_time, s.path))
    doomed: list[tuple[SegmentRecord, str]] = []
    gone: set[str] = set()

    def _apply(candidates: list[SegmentRecord], limits: RetentionLimits, scope: str) -> None:
        alive = [s for s in candidates if s.path not in gone]
        if limits.max_age_seconds is not None:
            cutoff = now - limits.max_age_seconds
            for segment in alive:
                if segment.end_time < cutoff:
                    doomed.append((segment, f"{scope} max_age_seconds {limits.max_age_seconds:g}"))
                    gone.add(segment.path)
            alive = [s for s in alive if s.path not in gone]
        if limits.max_total_bytes is not None:
            total = sum(s.bytes for s in alive)
            for segment in alive:
                if total <= limits.max_total_bytes:
                    break
                doomed.append((segment, f"{scope} max_total_bytes {limits.max_total_bytes}"))
                gone.add(segment.path)
                total -= segment.bytes

    for stream_id, limits in per_stream.items():
        if limits.active:
            _apply([s for s in keep if s.stream_id == stream_id], limits, "stream")
    if global_limits.active:
        _apply(keep, global_limits, "global")
    return doomed


@dataclass(frozen=True)
class FreeSpace:
    free_bytes: int  # available to unprivileged writers (f_bavail)
    total_bytes: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass(frozen=True)
class DiskThreshold:
    min_free_bytes: int | None = None
    min_free_percent: float | None = None


def free_space(path: str) -> FreeSpace:
    stats = os.statvfs(path)
    return FreeSpace(free_bytes=stats.f_bavail * stats.f_frsize, total_bytes=stats.f_blocks * stats.f_frsize)


def disk_verdict(space: FreeSpace, threshold: DiskThreshold, *, paused: bool) -> str | None:
    """The reason to be (or stay) paused, or None to record. Resuming needs RESUME_FACTOR headroom."""
    factor = RESUME_FACTOR if paused else 1.0
    if threshold.min_free_bytes and space.free_bytes < threshold.min_free_bytes * factor:
        return (
            f"free space {space.free_bytes / 1e6:.1f} MB below the minimum "
            f"{threshold.min_free_bytes * factor / 1e6:.1f} MB"
        )
    if threshold.min_free_percent and space.free_percent < threshold.min_free_percent * factor:
        minimum = threshold.min_free_percent * factor
        return f"free space {space.free_percent:.1f} % below the minimum {minimum:.1f} %"
    return None
