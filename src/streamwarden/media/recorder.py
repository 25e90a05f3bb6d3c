"""Recording branch: time/size-rotated segments written by splitmuxsink, pass-through.

Crash tolerance comes from the muxer set-ups measured in shared/notes (SIGKILL table):
Matroska through an unbuffered filesink, or MP4 with 1 s fragments, keep the file being
written playable. Segment-close on tear-down: EOS into the recording branch only, then
wait (bounded) for splitmuxsink to report the newest segment closed; NULL straight away
loses MP4's index.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from streamwarden.config import RecordConfig, RecordFormat, StreamSpec
from streamwarden.media.gst import Gst
from streamwarden.media.pipeline import add_chain, inside, make_element, pad_of

log = logging.getLogger(__name__)


class RecorderBranch:
    """One attempt's recorder: ``queue ! splitmuxsink`` hanging off the stream's tee."""

    name = "recorder"

    def __init__(self, stream_id: str, record: RecordConfig) -> None:
        self.stream_id = stream_id
        self.record = record
        self.directory = Path(record.dir) / stream_id
        self.segment_paths: list[str] = []  # every file this attempt opened, oldest first
        self.errors: list[str] = []
        self._bin: Gst.Element | None = None
        self._queue: Gst.Element | None = None

    def attach(self, pipeline: Gst.Pipeline, tee: Gst.Element) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        queue = make_element("queue", "record-queue")
        queue.set_property("max-size-time", 5 * Gst.SECOND)
        queue.set_property("max-size-buffers", 0)
        queue.set_property("max-size-bytes", 0)
        queue.set_property("leaky", 2)  # a slow disk drops for the recorder only
        split = make_element("splitmuxsink", "recorder")
        split.set_property("max-size-time", int(self.record.segment_seconds * Gst.SECOND))
        if self.record.segment_bytes:
            split.set_property("max-size-bytes", self.record.segment_bytes)
        # Instances (not factory names + properties): 1.22 ignores muxer-properties unless
        # async-finalize is on; they must be set before the sink pad is linked.
        if self.record.format == RecordFormat.MP4:
            muxer = make_element("mp4mux")
            muxer.set_property("fragment-duration", 1000)  # playable after a crash
        else:
            muxer = make_element("matroskamux")
        sink = make_element("filesink")
        sink.set_property("buffer-mode", 2)  # unbuffered: a SIGKILL loses no buffered bytes
        sink.set_property("async", False)
        split.set_property("muxer", muxer)
        split.set_property("sink", sink)
        split.connect("format-location", self._next_segment)
        add_chain(pipeline, tee, [queue, split])
        self._bin = split
        self._queue = queue

    def _next_segment(self, _split: Gst.Element, _index: int) -> str:
        path = segment_path(self.directory, self.stream_id, self.record.format.value)
        self.segment_paths.append(path)
        return path

    def owns(self, element: Gst.Object) -> bool:
        return any(e is not None and inside(element, e) for e in (self._bin, self._queue))

    def on_message(self, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.ERROR:
            error, _debug = message.parse_error()
            self.errors.append(error.message or "")
            log.warning("[%s] recorder error: %s", self.stream_id, error.message)

    def needs_finish(self) -> bool:
        return self._bin is not None

    def finish(self, pipeline: Gst.Pipeline, bus: Gst.Bus, deadline: float) -> None:
        if self._queue is None:
            return
        pad_of(self._queue, "sink").send_event(Gst.Event.new_eos())
        while time.monotonic() < deadline:
            message = bus.timed_pop_filtered(
                100 * Gst.MSECOND, Gst.MessageType.ELEMENT | Gst.MessageType.ERROR
            )
            if message is None:
                continue
            structure = message.get_structure()
            if message.type == Gst.MessageType.ELEMENT:
                # Only the close of the newest segment ends the wait: a rotation that raced
                # the EOS closes the previous one and opens another.
                if (
                    structure is not None
                    and structure.get_name() == "splitmuxsink-fragment-closed"
                    and self.segment_paths
                    and structure.get_string("location") == self.segment_paths[-1]
                ):
                    return
            elif message.src is not None and self.owns(message.src):
                return  # the recorder itself failed: nothing more will come
        log.warning("[%s] recording segment not closed within the drain time", self.stream_id)

    def disposed(self) -> None:
        for segment in self.segment_paths:  # a segment opened as the stream died holds nothing
            path = Path(segment)
            if path.exists() and path.stat().st_size == 0:
                path.unlink(missing_ok=True)


def recorder_branch(spec: StreamSpec) -> RecorderBranch | None:
    """Branch factory the engine calls for every attempt."""
    return RecorderBranch(spec.id, spec.record) if spec.record is not None else None


def segment_path(directory: Path, stream_id: str, suffix: str) -> str:
    """``<dir>/<id>-<UTC start>.<ext>``; never the name of an existing file."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = directory / f"{stream_id}-{stamp}.{suffix}"
    index = 1
    while candidate.exists():
        candidate = directory / f"{stream_id}-{stamp}-{index}.{suffix}"
        index += 1
    return str(candidate)
