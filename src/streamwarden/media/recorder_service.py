"""Per-stream recorders and the engine-wide recording service.

A ``Recorder`` is one stream's recording across every pipeline attempt: its state (active,
paused by the disk guard, failed and retrying, stopped by the operator), its figures, and a
fresh ``RecorderBranch`` for each attempt, or hung into the running pipeline when recording
is (re)started between attempts, so a recorder problem never rebuilds the ingest.

``RecordingService`` owns what recorders share: the SQLite segment index(es), and two worker
threads so no file work ever runs on the loop thread. The *finalize* worker validates each
closed ``.part`` file (a GStreamer pass over it), renames it atomically and indexes it, and
runs the periodic disk guard and retention; the *maintenance* worker recovers crash
leftovers and reconciles index and disk (slow: a rebuild scans every file). Recorder state
lives on the loop thread; workers report back through ``LoopThread.schedule``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from streamwarden.config import RecordConfig, RecordingConfig, StreamSpec
from streamwarden.media.gst import GLib
from streamwarden.media.loop import LoopThread
from streamwarden.media.recorder import BranchState, OpenSegment, RecorderBranch
from streamwarden.media.segments import MediaScan, remux, scan
from streamwarden.policy.backoff import Backoff
from streamwarden.recording.index import CloseReason, Gap, SegmentIndex, SegmentRecord
from streamwarden.recording.naming import (
    final_path_for,
    parse_segment_name,
    template_regex,
    unique_paths,
)
from streamwarden.recording.retention import (
    DiskThreshold,
    RetentionLimits,
    disk_verdict,
    free_space,
    plan_deletions,
)

if TYPE_CHECKING:
    from streamwarden.media.pipeline import StreamPipeline

log = logging.getLogger(__name__)
T = TypeVar("T")

INDEX_NAME = "segments.sqlite3"
REMUX_SUFFIX = ".remux"
# A recorder that takes frames but has written none for this long is restarted (its disk hangs,
# or the muxer stopped): recording must never die silently while the live stream plays.
LIVENESS_SECONDS = 20.0
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class RecorderState(StrEnum):
    IDLE = "idle"  # configured; waiting for the stream to play (start-up, outage)
    ACTIVE = "active"  # a segment is open and frames reach it
    PAUSED = "paused"  # the disk guard paused it: free space below the minimum
    ERROR = "error"  # writing failed; retried with backoff, ingest untouched
    STOPPED = "stopped"  # stopped by the operator


# -- worker threads --------------------------------------------------------------------------------
class Worker:
    """One daemon thread running submitted jobs in order (daemon: a hung scan never blocks exit)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._pending = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._pending += 1
        self._jobs.put((job, future))
        return future

    @property
    def pending(self) -> int:
        return self._pending

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, future = item
            try:
                if future.set_running_or_notify_cancel():
                    future.set_result(job())
            except BaseException as exc:
                log.exception("%s: job failed", self.name)
                future.set_exception(exc)
            finally:
                with self._lock:
                    self._pending -= 1

    def flush(self, timeout: float) -> bool:
        """Wait until every job submitted so far is done; False on timeout."""
        if not self._thread.is_alive():
            return self._pending == 0
        try:
            self.submit(lambda: None).result(timeout)
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        self._jobs.put(None)


# -- claimed paths --------------------------------------------------------------------------------------
class SegmentClaims:
    """Part and final paths of one stream id's segments that are open or not yet finalized.

    Shared by every ``Recorder`` a stream id has had: a stream removed and added again at once
    gets a new recorder while the old branch is still closing its last ``.part``; the new
    recorder's reconcile must see that file as open, and its new segments must not take the
    old branch's names. ``users`` counts recorders holding it; the service drops it when no
    recorder holds it and no claim is left (any thread).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.paths: set[str] = set()
        self.users = 0


# -- the recorder of one stream ----------------------------------------------------------------------
class Recorder:
    """One stream's recording, across pipeline attempts (loop thread unless noted)."""

    def __init__(self, stream_id: str, record: RecordConfig, service: RecordingService) -> None:
        self.stream_id = stream_id
        self.record = record
        self._service = service
        self.state = RecorderState.IDLE
        self.reason = "waiting for the stream"
        self.category: str | None = None
        self.wanted = True
        self.paused_reason: str | None = None
        self.shed_reason: str | None = None  # paused to relieve resource pressure (engine limits)
        self.branch: RecorderBranch | None = None
        self._live: list[RecorderBranch] = []  # branches whose elements are not yet in NULL
        self.backoff = Backoff(service.config.retry.to_policy())
        self.retry_at: float | None = None
        self._retry_timer: GLib.Source | None = None
        self._serial = 0
        self.segments_written = 0
        self.bytes_written = 0
        self.frames_written = 0
        self.errors_total = 0
        # Frames of branches that are gone (what entered the recorder, and what it dropped).
        self._frames_in_done = 0
        self._frames_dropped_done = 0
        self.invalid_segments = 0
        self.recovered_segments = 0
        self.last_segment: SegmentRecord | None = None
        self.last_error: str | None = None
        self._reconcile_on_success = False
        self.current_segment: str | None = None
        self._claims = service.hold_claims(stream_id)

    # -- which branch an attempt gets -----------------------------------------------------------
    def branch_for_attempt(self, record: RecordConfig) -> RecorderBranch | None:
        moved = (record.dir, record.file_template) != (self.record.dir, self.record.file_template)
        self.record = record
        if moved:  # a changed directory or template may hold leftovers of its own
            self._service.reconcile_soon(self.stream_id, record, self.open_paths)
        stale = self.branch
        if stale is not None and stale.state == BranchState.ATTACHED:
            stale.attempt_ended = True  # its attempt failed to build and never ran
            if stale in self._live:
                self._live.remove(stale)
        self.branch = None
        if self._held_back():
            return None
        return self._new_branch()

    def _new_branch(self) -> RecorderBranch | None:
        try:
            Path(self.record.dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._failed(f"cannot create {self.record.dir}: {exc.strerror or exc}", "resource")
            return None
        self._serial += 1
        self.branch = RecorderBranch(
            self.stream_id, self.record, owner=self, loop=self._service.loop, serial=self._serial
        )
        self._live.append(self.branch)
        self._set(RecorderState.IDLE, "starting: waiting for a keyframe")
        return self.branch

    def attempt_ending(self, reason: CloseReason) -> None:
        """The stream's pipeline is about to be disposed; its recording segment closes with it."""
        branch = self.branch
        self.branch = None
        if branch is not None:
            branch.attempt_ended = True
            if branch.state == BranchState.ATTACHED:
                branch.close_reason = reason
        self.current_segment = None
        if self.state == RecorderState.ACTIVE or (self.state == RecorderState.IDLE and branch is not None):
            self._set(RecorderState.IDLE, f"waiting for the stream ({reason})")

    def try_attach(self) -> None:
        """Start a branch in the stream's running pipeline, if recording should run now."""
        if self._held_back():
            return
        if self.branch is not None:
            return
        pipeline = self._service.pipeline_of(self.stream_id)
        if pipeline is None:
            return  # the next attempt brings a branch with it
        branch = self._new_branch()
        if branch is None:
            return
        try:
            pipeline.add_branch(branch)
        except Exception as exc:
            log.exception("[%s] cannot attach the recorder", self.stream_id)
            self.branch = None
            self._live.remove(branch)
            self._failed(f"cannot attach: {exc}", "pipeline")
            return
        log.info("[%s] recorder attached to the running pipeline", self.stream_id)

    def _detach(self, reason: CloseReason) -> None:
        branch = self.branch
        self.branch = None
        self.current_segment = None
        if branch is not None:
            branch.detach(reason)

    # -- operator and disk guard --------------------------------------------------------------------
    def start(self) -> None:
        self.wanted = True
        if self.state == RecorderState.STOPPED:
            if self.paused_reason is not None:
                self._set(RecorderState.PAUSED, self.paused_reason, "resource")
            else:
                self._set(RecorderState.IDLE, "started by operator")
        self.try_attach()

    def stop(self) -> None:
        self.wanted = False
        self._cancel_retry()
        self._detach(CloseReason.STOPPED)
        self._set(RecorderState.STOPPED, "stopped by operator")

    def disk_checked(self, verdict: str | None) -> None:
        if verdict is not None and self.paused_reason is None:
            self.paused_reason = verdict
            log.warning("[%s] recording paused: %s", self.stream_id, verdict)
            self._detach(CloseReason.PAUSED)
            if self.wanted:
                self._set(RecorderState.PAUSED, verdict, "resource")
        elif verdict is not None:
            self.paused_reason = verdict
            if self.state == RecorderState.PAUSED:
                self.reason = verdict
        elif self.paused_reason is not None:
            self.paused_reason = None
            log.info("[%s] recording resumes: free space is back", self.stream_id)
            if self.state == RecorderState.PAUSED:
                self._set(RecorderState.IDLE, "free space is back")
            self.try_attach()

    def _held_back(self) -> bool:
        """Recording is not wanted now: stopped, paused by the disk guard or shedding, or waiting to retry."""
        paused = self.paused_reason is not None or self.shed_reason is not None
        return not self.wanted or paused or self.retry_at is not None

    def shed(self, reason: str | None) -> None:
        """Pause recording to relieve resource pressure (``reason``), or resume it (None)."""
        if reason is not None and self.shed_reason is None:
            self.shed_reason = reason
            log.warning("[%s] recording paused (shed): %s", self.stream_id, reason)
            self._detach(CloseReason.PAUSED)
            if self.wanted:
                self._set(RecorderState.PAUSED, f"shed under resource pressure: {reason}", "resource")
        elif reason is None and self.shed_reason is not None:
            self.shed_reason = None
            log.info("[%s] recording resumes: resource pressure is gone", self.stream_id)
            if self.state == RecorderState.PAUSED and self.paused_reason is None:
                self._set(RecorderState.IDLE, "resource pressure is gone")
            self.try_attach()

    def tick(self) -> None:
        """Liveness: frames going in but none reaching the file means a stuck writer."""
        branch = self.branch
        if branch is None or branch.state != BranchState.ATTACHED:
            return
        branch.poll()
        if branch.last_in_at is None:
            return
        written = branch.last_mux_at or branch.attached_at
        if branch.last_in_at - written > LIVENESS_SECONDS:
            stuck = branch.last_in_at - written
            self.branch_failed(branch, f"no frame written for {stuck:.0f} s", "resource")

    # -- BranchOwner ----------------------------------------------------------------------------------
    def claim_segment(self, relative_stem: str) -> tuple[Path, Path]:
        claims = self._claims
        with claims.lock:
            directory, ext = Path(self.record.dir), self.record.format.value
            part, final = unique_paths(directory, relative_stem, ext, claims.paths)
            claims.paths.update((str(part), str(final)))
        return part, final

    def release_claim(self, segment: OpenSegment) -> None:
        self._service.release_claims(self.stream_id, self._claims, (str(segment.part), str(segment.final)))

    def open_paths(self) -> set[str]:
        """Paths still open or being finalized by any branch of this stream id (any thread)."""
        with self._claims.lock:
            return set(self._claims.paths)

    def segment_opened(self, branch: RecorderBranch, segment: OpenSegment) -> None:
        if branch is self.branch:
            self.current_segment = str(segment.final)
            if self.state != RecorderState.ACTIVE:
                if self._reconcile_on_success:
                    # Writing works again: files a failed rename or index left behind get their turn.
                    self._reconcile_on_success = False
                    self._service.reconcile_soon(self.stream_id, self.record, self.open_paths)
                self._set(RecorderState.ACTIVE, "recording")

    def segment_closed(
        self,
        branch: RecorderBranch,
        segment: OpenSegment,
        reason: CloseReason,
        frames: int | None,
        clean: bool,
    ) -> None:
        record = branch.record  # what the file was written with, even if the spec changed since
        self._service.finalizer.submit(lambda: self._finalize(segment, reason, frames, clean, record))

    def _finalize(
        self, segment: OpenSegment, reason: CloseReason, frames: int | None, clean: bool, record: RecordConfig
    ) -> None:
        result = FinalizeResult(None)
        try:
            result = finalize_segment(
                self._service.index_for(record.dir),
                self.stream_id,
                segment.part,
                fmt=record.format.value,
                start_time=segment.start_time,
                reason=reason,
                frames=frames,
                clean=clean,
                max_duration=max(record.segment_seconds * 2, record.segment_seconds + 30),
            )
        except OSError as exc:  # e.g. the directory became read-only: a later reconcile recovers it
            log.error("[%s] cannot finalize %s: %s", self.stream_id, segment.part.name, exc)
            if isinstance(exc, SegmentUnreadableError) or exc.errno in _OUT_OF_DESCRIPTORS:
                message = f"cannot finalize {segment.part.name}: {exc}"
                self._service.loop.schedule(lambda: self._finalize_failed(message))
        finally:
            self.release_claim(segment)
        if result.record is not None and not result.indexed:
            self._service.index_later(record.dir, result.record)
        self._service.loop.schedule(lambda: self._finalized(result))

    def _finalized(self, result: FinalizeResult) -> None:
        if result.record is not None:
            record = result.record
            self.segments_written += 1
            self.bytes_written += record.bytes
            self.frames_written += record.frames
            self.last_segment = record
            if record.close_reason == CloseReason.ROTATION and self.state == RecorderState.ACTIVE:
                self.backoff.reset()  # writing works again: the next failure starts from the bottom
        elif result.invalid:
            self.invalid_segments += 1

    def _finalize_failed(self, message: str) -> None:
        """Closed files cannot be finalized (out of descriptors): stop writing more of them.

        A resource failure like a write error: the branch is detached, retried with backoff,
        and the ``.part`` files left meanwhile are reconciled once writing works again.
        """
        if self.state in (RecorderState.STOPPED, RecorderState.ERROR) or not self.wanted:
            return
        self._detach(CloseReason.ERROR)
        self._failed(message, "resource")

    def branch_failed(self, branch: RecorderBranch, message: str, category: str) -> None:
        if branch is not self.branch:
            log.info("[%s] earlier recorder branch reported: %s", self.stream_id, message)
            return
        self._detach(CloseReason.ERROR)
        self._failed(message, category)

    def branch_done(self, branch: RecorderBranch) -> None:
        def _done() -> None:
            if branch in self._live:
                self._live.remove(branch)
                self._frames_in_done += branch.frames_in
                self._frames_dropped_done += branch.frames_dropped
            if branch is self.branch:
                self.branch = None
            self._service.forget_branch(self.stream_id, branch)

        self._service.loop.schedule(_done)

    @property
    def frames_in(self) -> int:
        """Frames that entered the recorder (from each branch's first keyframe), all branches."""
        return self._frames_in_done + sum(b.frames_in for b in self._live)

    @property
    def frames_dropped(self) -> int:
        return self._frames_dropped_done + sum(b.frames_dropped for b in self._live)

    # -- internals ----------------------------------------------------------------------------------
    def _failed(self, message: str, category: str) -> None:
        self.errors_total += 1
        self._reconcile_on_success = True
        self.last_error = message
        delay = self.backoff.next_delay()
        self._cancel_retry()
        self.retry_at = time.monotonic() + delay
        self._retry_timer = self._service.loop.timeout(delay, self._retry)
        self._set(RecorderState.ERROR, f"{message}; retry in {delay:.1f} s", category)
        log.warning(
            "[%s] recorder failed (%s): %s; retry in %.1f s", self.stream_id, category, message, delay
        )

    def _retry(self) -> bool:
        self._retry_timer = None
        self.retry_at = None
        if self.state == RecorderState.ERROR:
            self._set(RecorderState.IDLE, "retrying")
        self.try_attach()
        return False

    def _cancel_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.destroy()
            self._retry_timer = None
        self.retry_at = None

    def close(self) -> None:
        self._cancel_retry()
        self._service.drop_claims(self.stream_id, self._claims)

    def note_recovered(self, count: int) -> None:
        self.recovered_segments += count

    def _set(self, state: RecorderState, reason: str, category: str | None = None) -> None:
        if state != self.state:
            log.info("[%s] recorder %s -> %s: %s", self.stream_id, self.state, state, reason)
        self.state = state
        self.reason = reason
        self.category = category

    def describe(self) -> dict[str, Any]:
        last = self.last_segment
        return {
            "active": self.state == RecorderState.ACTIVE,
            "state": str(self.state),
            "reason": self.reason,
            "category": self.category,
            "dir": self.record.dir,
            "format": str(self.record.format),
            "current_segment": self.current_segment,
            "segments_written": self.segments_written,
            "bytes_written": self.bytes_written,
            "frames_written": self.frames_written,
            "frames_in": self.frames_in,
            "frames_dropped": self.frames_dropped,
            "errors_total": self.errors_total,
            "invalid_segments": self.invalid_segments,
            "recovered_segments": self.recovered_segments,
            "last_error": self.last_error,
            "retry_in_seconds": None
            if self.retry_at is None
            else round(max(0.0, self.retry_at - time.monotonic()), 3),
            "last_segment": None if last is None else last.as_dict(),
        }


# -- finalizing files (worker threads) ---------------------------------------------------------------
class SegmentUnreadableError(OSError):
    """GStreamer could not open or read a segment (out of descriptors, permissions).

    No verdict on the file: it is kept as ``.part`` for a later reconcile, never deleted.
    """


@dataclass(frozen=True)
class FinalizeResult:
    record: SegmentRecord | None
    invalid: bool = False
    indexed: bool = False


def finalize_segment(
    index: SegmentIndex | None,
    stream_id: str,
    part: Path,
    *,
    fmt: str,
    start_time: float | None,
    reason: CloseReason,
    frames: int | None,
    clean: bool,
    max_duration: float | None = None,
) -> FinalizeResult:
    """Validate a closed ``.part`` file, make it playable if it was cut off, rename, index.

    ``clean`` False (a crash leftover, a write error, a NULL without EOS) always remuxes: the
    container's own duration and index are then right, not only its frames. A part that
    vanishes midway was finalized by another job (claims make that rare, not impossible: a
    reconcile from another process, an operator): that is not an error of this one.
    """
    try:
        return _finalize_segment(
            index,
            stream_id,
            part,
            fmt=fmt,
            start_time=start_time,
            reason=reason,
            frames=frames,
            clean=clean,
            max_duration=max_duration,
        )
    except FileNotFoundError:
        if part.exists():
            raise  # something else is missing (the directory of the final name): a real error
        log.info("[%s] %s was finalized by another job meanwhile", stream_id, part.name)
        return FinalizeResult(None)


def _finalize_segment(
    index: SegmentIndex | None,
    stream_id: str,
    part: Path,
    *,
    fmt: str,
    start_time: float | None,
    reason: CloseReason,
    frames: int | None,
    clean: bool,
    max_duration: float | None,
) -> FinalizeResult:
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        # splitmuxsink names the next fragment before data for it arrives; an EOS then means the
        # name was never opened. Only a file that had frames going to it is worth a warning.
        level = logging.WARNING if frames else logging.DEBUG
        log.log(level, "[%s] closed segment %s is gone", stream_id, part)
        return FinalizeResult(None)
    if size == 0:
        part.unlink(missing_ok=True)  # opened as the stream died: holds nothing
        return FinalizeResult(None)
    checked = scan(part)
    _still_there(part)
    if checked.unreadable:
        raise SegmentUnreadableError(f"cannot read {part.name}: {checked.error}")
    if not checked.playable:
        log.warning(
            "[%s] segment %s holds no playable frame (%s): removed", stream_id, part.name, checked.error
        )
        part.unlink(missing_ok=True)
        return FinalizeResult(None)
    repaired = False
    final = final_path_for(part)
    if not (clean and checked.clean):
        fixed = _repair(stream_id, part, final, fmt)
        if fixed is not None:
            checked, repaired = fixed, True
        else:
            _still_there(part)
    if not repaired:
        _fsync(part)
        os.rename(part, final)
    _fsync_dir(final.parent)
    duration = checked.duration
    too_long = max_duration is not None and reason != CloseReason.CRASH_RECOVERED and duration > max_duration
    if duration <= 0 or too_long:
        invalid = final.with_name(f"{final.stem}.invalid{final.suffix}")
        os.rename(final, invalid)
        log.error(
            "[%s] segment %s has an implausible duration %.1f s: kept as %s, not indexed",
            stream_id,
            final.name,
            duration,
            invalid.name,
        )
        return FinalizeResult(None, invalid=True)
    if frames is not None and not repaired and frames != checked.frames:
        log.warning("[%s] %s: %d frames muxed, %d in the file", stream_id, final.name, frames, checked.frames)
    if frames is None or repaired:
        frames = checked.frames
    stat = final.stat()
    start = start_time if start_time is not None else stat.st_mtime - duration
    record = SegmentRecord(
        stream_id=stream_id,
        path=str(final),
        start_time=start,
        end_time=start + duration,
        duration=duration,
        bytes=stat.st_size,
        frames=frames,
        close_reason=str(reason),
        format=fmt,
    )
    indexed = False
    if index is not None:
        try:
            index.add(record)
            indexed = True
        except Exception as exc:  # disk full under the index: the file is kept, the row retried
            log.error("[%s] cannot index %s yet: %s", stream_id, final.name, exc)
    log.info(
        "[%s] segment %s closed (%s): %.2f s, %d frames, %d bytes%s",
        stream_id,
        final.name,
        reason,
        duration,
        frames,
        stat.st_size,
        ", repaired" if repaired else "",
    )
    return FinalizeResult(record, indexed=indexed)


def _repair(stream_id: str, part: Path, final: Path, fmt: str) -> MediaScan | None:
    """Remux into ``final``; None when that failed (the part is then kept as it is)."""
    temporary = part.with_name(part.name + REMUX_SUFFIX)
    try:
        copied = remux(part, temporary, fmt)
        checked = scan(temporary) if copied.frames else copied
        if checked.unreadable:
            raise SegmentUnreadableError(f"cannot remux {part.name}: {checked.error}")
        if not checked.clean:
            raise RuntimeError(checked.error or "remuxed file does not play")
        _fsync(temporary)
        _still_there(part)  # another job finalized it meanwhile: never replace its file
        os.rename(temporary, final)
        part.unlink(missing_ok=True)
        return checked
    except Exception as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, SegmentUnreadableError):
            raise  # not the file's fault: keep it as .part for a later try, unrenamed
        if part.exists():
            log.warning("[%s] cannot remux %s (%s): kept as written", stream_id, part.name, exc)
        return None


def _still_there(part: Path) -> None:
    """A GStreamer pass reads a vanished file as an error: tell that apart from a broken file."""
    if not part.exists():
        raise FileNotFoundError(2, "finalized elsewhere", str(part))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Some file systems refuse directory fsync; the rename itself is still atomic.
    with contextlib.suppress(OSError):
        _fsync(path)


def _walk(base: Path) -> Iterator[Path]:
    for root, _dirs, files in os.walk(base):
        for name in files:
            yield Path(root) / name


# -- the service ------------------------------------------------------------------------------------
class RecordingService:
    """Everything the recorders of one engine share (created by the engine)."""

    def __init__(
        self,
        config: RecordingConfig,
        loop: LoopThread,
        pipeline_of: Callable[[str], StreamPipeline | None],
    ) -> None:
        self.config = config
        self.loop = loop
        self.pipeline_of = pipeline_of
        self.finalizer = Worker("record-finalize")
        self.maintenance = Worker("record-maintenance")
        self._recorders: dict[str, Recorder] = {}
        self._indexes: dict[str, SegmentIndex] = {}
        self._indexes_lock = threading.Lock()
        self._next_check = 0.0
        self._check_running = False
        self._unindexed: list[tuple[str, SegmentRecord]] = []  # rows the index refused (disk full)
        self._unindexed_lock = threading.Lock()
        self._claims: dict[str, SegmentClaims] = {}  # by stream id, across recorders (see SegmentClaims)
        self._claims_lock = threading.Lock()
        self._closing = False

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.finalizer.start()
        self.maintenance.start()

    def flush(self, timeout: float) -> bool:
        """Wait for queued finalization and maintenance (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        done = self.finalizer.flush(timeout)
        done = self.maintenance.flush(max(0.0, deadline - time.monotonic())) and done
        return self.finalizer.flush(max(0.0, deadline - time.monotonic())) and done

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        if not self.finalizer.flush(timeout):
            log.error("recording: segments still being finalized at shutdown (left as .part)")
        self.finalizer.stop()
        self.maintenance.stop()
        with self._indexes_lock:
            indexes = list(self._indexes.values())
            self._indexes.clear()
        for index in indexes:
            index.close()

    # -- recorders (loop thread) ------------------------------------------------------------------
    def register(self, spec: StreamSpec) -> None:
        """A stream was added: its recorder exists from now on (and recovers crash leftovers)."""
        if spec.record is not None:
            self._recorder(spec.id, spec.record)

    def branch_for(self, spec: StreamSpec) -> RecorderBranch | None:
        """The engine's branch factory: called for every pipeline attempt."""
        if spec.record is None:
            return None
        return self._recorder(spec.id, spec.record).branch_for_attempt(spec.record)

    def _recorder(self, stream_id: str, record: RecordConfig) -> Recorder:
        recorder = self._recorders.get(stream_id)
        if recorder is None:
            recorder = Recorder(stream_id, record, self)
            self._recorders[stream_id] = recorder
            self.maintenance.submit(lambda: self.reconcile(stream_id, record, recorder.open_paths))
        return recorder

    # -- claims (any thread) ---------------------------------------------------------------------------
    def hold_claims(self, stream_id: str) -> SegmentClaims:
        """The stream id's claims, shared with any earlier recorder whose files are still closing."""
        with self._claims_lock:
            claims = self._claims.setdefault(stream_id, SegmentClaims())
            claims.users += 1
            return claims

    def drop_claims(self, stream_id: str, claims: SegmentClaims) -> None:
        """A recorder is gone; its claims stay until its last segment is finalized."""
        with self._claims_lock:
            claims.users -= 1
            self._prune_claims(stream_id, claims)

    def release_claims(self, stream_id: str, claims: SegmentClaims, paths: tuple[str, ...]) -> None:
        with self._claims_lock:
            with claims.lock:
                claims.paths.difference_update(paths)
            self._prune_claims(stream_id, claims)

    def _prune_claims(self, stream_id: str, claims: SegmentClaims) -> None:
        with claims.lock:
            unused = claims.users <= 0 and not claims.paths
        if unused and self._claims.get(stream_id) is claims:
            del self._claims[stream_id]

    def open_paths(self, stream_id: str) -> set[str]:
        """Paths of the stream id that any branch, current or removed, still writes or finalizes."""
        with self._claims_lock:
            claims = self._claims.get(stream_id)
        if claims is None:
            return set()
        with claims.lock:
            return set(claims.paths)

    def reconcile_soon(
        self, stream_id: str, record: RecordConfig, open_paths: Callable[[], set[str]]
    ) -> None:
        self.maintenance.submit(lambda: self.reconcile(stream_id, record, open_paths))

    def recorder(self, stream_id: str) -> Recorder | None:
        return self._recorders.get(stream_id)

    def attempt_ending(self, stream_id: str, pipeline: StreamPipeline, reason: CloseReason | str) -> None:
        """The supervisor is about to dispose ``pipeline``: its recorder branches go with it."""
        for branch in pipeline.branches:
            if isinstance(branch, RecorderBranch):
                branch.attempt_ended = True
        recorder = self._recorders.get(stream_id)
        if recorder is not None:
            recorder.attempt_ending(CloseReason(reason))

    def describe(self, spec: StreamSpec) -> dict[str, Any] | None:
        if spec.record is None:
            return None
        recorder = self._recorders.get(spec.id)
        if recorder is None:
            return {
                "active": False,
                "state": str(RecorderState.IDLE),
                "reason": "waiting for the stream",
                "dir": spec.record.dir,
                "format": str(spec.record.format),
            }
        return recorder.describe()

    def start_recording(self, spec: StreamSpec) -> None:
        if spec.record is None:
            raise ValueError(f"stream {spec.id!r} has no record section")
        self._recorder(spec.id, spec.record).start()

    def stop_recording(self, spec: StreamSpec) -> None:
        if spec.record is None:
            raise ValueError(f"stream {spec.id!r} has no record section")
        self._recorder(spec.id, spec.record).stop()

    def shed(self, stream_id: str, reason: str | None) -> bool:
        """Pause (reason) or resume (None) one stream's recording; False: it has no recorder."""
        recorder = self._recorders.get(stream_id)
        if recorder is None:
            return False
        recorder.shed(reason)
        return True

    def forget(self, stream_id: str) -> None:
        recorder = self._recorders.pop(stream_id, None)
        if recorder is not None:
            recorder.close()

    def forget_branch(self, stream_id: str, branch: RecorderBranch) -> None:
        pipeline = self.pipeline_of(stream_id)
        if pipeline is not None:
            pipeline.remove_branch(branch)

    def tick(self) -> None:
        """Engine tick (loop thread): liveness every tick, disk and retention every interval."""
        for recorder in list(self._recorders.values()):
            recorder.tick()
        now = time.monotonic()
        if now < self._next_check or self._check_running or self._closing:
            return
        self._next_check = now + self.config.check_interval_seconds
        self._check_running = True
        jobs = [(r.stream_id, r.record, r.open_paths()) for r in self._recorders.values()]
        # On the finalize worker: quick, in order with finalization, and never queued behind
        # a long rebuild on the maintenance worker.
        self.finalizer.submit(lambda: self._periodic(jobs))

    # -- index -----------------------------------------------------------------------------------
    def index_path_for(self, record_dir: str) -> Path:
        if self.config.index_path is not None:
            return Path(self.config.index_path)
        return Path(record_dir) / INDEX_NAME

    def index_for(self, record_dir: str) -> SegmentIndex | None:
        """The index of a record directory (any thread); None when it cannot be opened."""
        path = self.index_path_for(record_dir)
        key = str(path)
        with self._indexes_lock:
            index = self._indexes.get(key)
            if index is None and not self._closing:
                try:
                    index = SegmentIndex(path)
                except Exception as exc:
                    log.error("cannot open the segment index %s: %s", path, exc)
                    return None
                self._indexes[key] = index
            return index

    def segments(
        self,
        stream_id: str,
        record: RecordConfig,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
    ) -> list[SegmentRecord]:
        index = self.index_for(record.dir)
        return [] if index is None else index.segments(stream_id, since, until)

    def gaps(
        self,
        stream_id: str,
        record: RecordConfig,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        min_seconds: float = 1.0,
    ) -> list[Gap]:
        index = self.index_for(record.dir)
        return [] if index is None else index.gaps(stream_id, since, until, min_seconds)

    # -- maintenance (maintenance worker) -----------------------------------------------------------
    def reconcile(
        self, stream_id: str, record: RecordConfig, open_paths: Callable[[], set[str]] = set
    ) -> dict[str, int]:
        """Make index and disk agree for one stream; recover crash leftovers first.

        Leftover ``.part`` files (not open now) are remuxed and indexed as crash_recovered;
        finished files without a row are validated and indexed as reindexed (this is how a
        lost index is rebuilt); rows whose file is gone are removed.
        """
        counts = {"recovered": 0, "reindexed": 0, "removed_rows": 0, "unplayable": 0}

        def is_open(path: str) -> bool:
            # Any branch of this stream id, including one of a removed-and-re-added stream.
            return path in open_paths() or path in self.open_paths(stream_id)

        index = self.index_for(record.dir)
        base = Path(record.dir)
        if index is None or not base.is_dir():
            return counts
        pattern = template_regex(record.file_template, stream_id)
        known = index.paths(stream_id)
        parts: list[Path] = []
        finals: list[Path] = []
        for path in _walk(base):
            relative = path.relative_to(base).as_posix()
            match = pattern.match(relative)
            if relative.endswith(REMUX_SUFFIX) and pattern.match(relative.removesuffix(REMUX_SUFFIX)):
                if not is_open(str(path).removesuffix(REMUX_SUFFIX)):
                    path.unlink(missing_ok=True)  # a remux cut short by a crash; its source is still there
            elif match is not None:
                (parts if match.group("part") else finals).append(path)
        for part in sorted(parts):
            if self._closing:
                return counts
            # Claimed before the file exists, released after the rename: a part that exists and
            # is unclaimed is a leftover, never the file being written.
            if is_open(str(part)) or not part.exists():
                continue
            name = parse_segment_name(record.file_template, stream_id, part.relative_to(base).as_posix())
            try:
                result = finalize_segment(
                    index,
                    stream_id,
                    part,
                    fmt=name.ext if name else record.format.value,
                    start_time=name.start.timestamp() if name and name.start else None,
                    reason=CloseReason.CRASH_RECOVERED,
                    frames=None,
                    clean=False,
                )
            except OSError as exc:  # kept as it is; the next reconcile tries again
                log.error("[%s] cannot recover %s: %s", stream_id, part.name, exc)
                continue
            if result.record is not None:
                counts["recovered"] += 1
                log.warning("[%s] recovered %s left by a crash", stream_id, Path(result.record.path).name)
        recorder = self._recorders.get(stream_id)
        if recorder is not None and counts["recovered"]:
            recovered = counts["recovered"]
            self.loop.schedule(lambda: recorder.note_recovered(recovered))
        for final in sorted(finals):
            if self._closing:
                return counts
            if str(final) in known or is_open(str(final)) or not final.exists():
                continue
            record_row = self._reindex(index, stream_id, record, base, final)
            counts["reindexed" if record_row else "unplayable"] += 1
        stale = [p for p in index.paths(stream_id) if not Path(p).exists()]
        if stale:
            counts["removed_rows"] = len(stale)
            index.remove(stale)
            log.warning("[%s] index: %d row(s) without a file removed", stream_id, len(stale))
        if any(counts.values()):
            log.info("[%s] index reconciled: %s", stream_id, counts)
        return counts

    def _reindex(
        self, index: SegmentIndex, stream_id: str, record: RecordConfig, base: Path, path: Path
    ) -> SegmentRecord | None:
        checked = scan(path)
        if not checked.playable:
            log.warning("[%s] %s does not play (%s): not indexed", stream_id, path.name, checked.error)
            return None
        name = parse_segment_name(record.file_template, stream_id, path.relative_to(base).as_posix())
        stat = path.stat()
        start = name.start.timestamp() if name and name.start else stat.st_mtime - checked.duration
        row = SegmentRecord(
            stream_id=stream_id,
            path=str(path),
            start_time=start,
            end_time=start + checked.duration,
            duration=checked.duration,
            bytes=stat.st_size,
            frames=checked.frames,
            close_reason=str(CloseReason.REINDEXED),
            format=name.ext if name else record.format.value,
        )
        index.add(row, replace=False)
        return row

    def index_later(self, record_dir: str, record: SegmentRecord) -> None:
        with self._unindexed_lock:
            self._unindexed.append((record_dir, record))

    def _retry_unindexed(self) -> None:
        with self._unindexed_lock:
            pending, self._unindexed = self._unindexed, []
        for record_dir, record in pending:
            index = self.index_for(record_dir)
            try:
                if index is None:
                    raise RuntimeError("index unavailable")
                if Path(record.path).exists():
                    index.add(record, replace=False)
            except Exception:
                self.index_later(record_dir, record)

    def _periodic(self, jobs: list[tuple[str, RecordConfig, set[str]]]) -> None:
        try:
            self._retry_unindexed()
            self._check_disks(jobs)
            self.enforce_retention(jobs)
        finally:
            self._check_running = False

    def _check_disks(self, jobs: list[tuple[str, RecordConfig, set[str]]]) -> None:
        verdicts: dict[str, str | None] = {}
        cache: dict[str, str | None] = {}
        for stream_id, record, _open in jobs:
            threshold = _threshold(record, self.config)
            recorder = self._recorders.get(stream_id)
            paused = recorder is not None and recorder.paused_reason is not None
            key = f"{record.dir}|{threshold}|{paused}"
            if key not in cache:
                try:
                    space = free_space(_existing(record.dir))
                except OSError as exc:
                    log.warning("[%s] cannot measure free space of %s: %s", stream_id, record.dir, exc)
                    continue
                cache[key] = disk_verdict(space, threshold, paused=paused)
            verdicts[stream_id] = cache[key]

        def _apply() -> None:
            for stream_id, verdict in verdicts.items():
                recorder = self._recorders.get(stream_id)
                if recorder is not None:
                    recorder.disk_checked(verdict)

        self.loop.schedule(_apply)

    def enforce_retention(self, jobs: list[tuple[str, RecordConfig, set[str]]]) -> list[SegmentRecord]:
        """Delete what the limits say must go, oldest first; returns what was deleted."""
        per_stream = {
            stream_id: RetentionLimits(record.max_age_seconds, record.max_total_bytes)
            for stream_id, record, _open in jobs
        }
        global_limits = RetentionLimits(self.config.max_age_seconds, self.config.max_total_bytes)
        if not global_limits.active and not any(limits.active for limits in per_stream.values()):
            return []
        protected: set[str] = set()
        indexes: dict[str, SegmentIndex] = {}
        for _stream_id, record, open_now in jobs:
            protected |= open_now
            index = self.index_for(record.dir)
            if index is not None:
                indexes[str(index.path)] = index
        deleted: list[SegmentRecord] = []
        by_path: dict[str, SegmentIndex] = {}
        rows: list[SegmentRecord] = []
        for index in indexes.values():
            for row in index.segments():
                by_path[row.path] = index
                rows.append(row)
        plan = plan_deletions(
            rows, now=time.time(), per_stream=per_stream, global_limits=global_limits, protected=protected
        )
        for row, why in plan:
            try:
                Path(row.path).unlink(missing_ok=True)
            except OSError as exc:
                log.error("[%s] retention cannot delete %s: %s", row.stream_id, row.path, exc)
                continue
            index_of_row = by_path.get(row.path)
            if index_of_row is not None:
                index_of_row.remove([row.path])
            deleted.append(row)
            log.info("[%s] retention deleted %s (%s)", row.stream_id, Path(row.path).name, why)
        return deleted


def _threshold(record: RecordConfig, config: RecordingConfig) -> DiskThreshold:
    """A stream's own disk-guard minimums, else the global ones."""
    min_bytes = record.min_free_bytes if record.min_free_bytes is not None else config.min_free_bytes
    percent = record.min_free_percent if record.min_free_percent is not None else config.min_free_percent
    return DiskThreshold(min_bytes, percent)


def _existing(path: str) -> str:
    """The directory itself, or its nearest existing parent (not created yet, or removed)."""
    current = Path(path)
    while not current.exists() and current.parent != current:
        current = current.parent
    return str(current)


__all__ = [
    "FinalizeResult",
    "Recorder",
    "RecorderState",
    "RecordingService",
    "Worker",
    "finalize_segment",
]
