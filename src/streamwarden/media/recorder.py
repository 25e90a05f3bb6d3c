"""Recording branch: one attempt's ``queue ! splitmuxsink`` on the stream's tee, pass-through.

Muxer set-ups follow the SIGKILL table in shared/notes (re-measured for docs/recording.md):
Matroska through an unbuffered filesink, or MP4 with 1 s fragments, keep the file being
written playable. Files are written as ``<name>.part.<ext>`` and handed to the recorder
(``BranchOwner``) when closed, which validates, renames and indexes them off the loop.

A write failure (disk full, EIO, directory gone) must never reach the ingest: splitmuxsink
errors make the record queue's task stop with a flow error, and the next buffer the tee
pushes into that queue would get the error back and end the whole pipeline. The entry
probe on the queue's sink pad therefore drops every buffer once the queue's src pad has
seen a flow error (or the branch was marked failed), before the queue's chain runs; the
owner then takes the branch out of the running pipeline and retries with a fresh one.

Audio, when the source has it: ``audio tee ! queue ! splitmuxsink.audio_0``, requested before
the first buffer (muxers take no pad later). Video stays the reference: segments still start on
a keyframe and the frame counts are video frames. G.711 does not fit MP4 (mp4mux refuses it):
for MP4 with G.711 the muxer is qtmux, a QuickTime file under the .mp4 name. The audio queue has
no per-buffer probe; the entry guard is installed by a synchronous bus handler when an element
inside the branch posts an ERROR, before the flow error can travel back into the audio tee.
Audio before the first video keyframe is muxed as it comes (splitmuxsink cuts on the video).

Threads: ``attach``/``detach``/``on_message`` run on the loop thread; the probes and
``format-location-full`` on streaming threads (counters and a path only); ``finish`` and
``disposed`` on the pipeline's disposal thread. A branch leaving a running pipeline sets its
elements to NULL on a short-lived ``dispose-recorder-*`` thread, for the same reason the
pipeline does: a writer stuck in ``write()`` (a hung NFS mount) must not freeze the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from streamwarden.config import RecordConfig, RecordFormat
from streamwarden.media.audio import AudioTap, accepts
from streamwarden.media.gst import GLib, Gst
from streamwarden.media.loop import LoopThread
from streamwarden.media.pipeline import inside, make_element, pad_of
from streamwarden.recording.index import CloseReason
from streamwarden.recording.naming import render_template

log = logging.getLogger(__name__)

# How long a runtime detach waits for the last segment to be closed before forcing NULL.
DETACH_TIMEOUT = 5.0
_RESOURCE_DOMAIN = "gst-resource-error-quark"


@dataclass
class OpenSegment:
    """A segment file this branch opened; ``handed_off`` once given to the owner."""

    sequence: int
    part: Path
    final: Path
    start_time: float  # UTC epoch seconds of its first frame
    opened: bool = False
    handed_off: bool = False


class BranchState(StrEnum):
    ATTACHED = "attached"
    DETACHING = "detaching"  # leaving a running pipeline, or finishing before disposal
    DONE = "done"


class BranchOwner(Protocol):
    """The per-stream recorder a branch reports to."""

    def claim_segment(self, relative_stem: str) -> tuple[Path, Path]:
        """(part, final) paths for a new segment, unused on disk and by any branch (streaming thread)."""
        ...

    def segment_opened(self, branch: RecorderBranch, segment: OpenSegment) -> None:
        """splitmuxsink opened the file (loop thread)."""

    def segment_closed(
        self,
        branch: RecorderBranch,
        segment: OpenSegment,
        reason: CloseReason,
        frames: int | None,
        clean: bool,
    ) -> None:
        """The file is closed; ``clean`` False when it may lack its end (any thread)."""

    def branch_failed(self, branch: RecorderBranch, message: str, category: str) -> None:
        """A write or muxing error inside the branch (loop thread)."""

    def branch_done(self, branch: RecorderBranch) -> None:
        """Every element of the branch is in NULL and every segment handed off (any thread)."""


class RecorderBranch:
    """``queue ! splitmuxsink`` hanging off the stream's tee, for one attempt or less."""

    name = "recorder"

    def __init__(
        self, stream_id: str, record: RecordConfig, *, owner: BranchOwner, loop: LoopThread, serial: int = 0
    ) -> None:
        self.stream_id = stream_id
        self.record = record
        self.directory = Path(record.dir)
        self.owner = owner
        self.serial = serial
        self._loop = loop
        self.state = BranchState.ATTACHED
        self.close_reason = CloseReason.OUTAGE
        self.attempt_ended = False  # the whole pipeline is being disposed: leave NULL to it
        self.failed = False
        self.segments: list[OpenSegment] = []
        self.frames_in = 0  # frames the recorder accepted (from its first keyframe)
        self.frames_skipped = 0  # frames before the first keyframe (a segment starts on one)
        self.frames_dropped = 0  # frames dropped because the branch had failed
        self.attached_at = time.monotonic()
        self.last_in_at: float | None = None
        self.last_mux_at: float | None = None
        self._keyframe_seen = False
        self._mux_counts: defaultdict[int, int] = defaultdict(int)
        self._mux_sequence = 0
        self._eos_sent = False
        self._lock = threading.Lock()
        self._pipeline: Gst.Pipeline | None = None
        self._tee: Gst.Element | None = None
        self._tee_pad: Gst.Pad | None = None
        self._queue: Gst.Element | None = None
        self._split: Gst.Element | None = None
        self._queue_src: Gst.Pad | None = None
        self._audio_queue: Gst.Element | None = None
        self._audio_tee: Gst.Element | None = None
        self._audio_tee_pad: Gst.Pad | None = None
        self._audio_guard = 0  # the drop probe on the audio queue once the branch failed
        self.audio_codec: str | None = None  # what this branch records besides video
        self._detach_timer: GLib.Source | None = None
        # Probes and signal handlers hold this object from C: cut once NULL (see _cut_cycles).
        self._probes: list[tuple[Gst.Pad, int]] = []
        self._handlers: list[tuple[Gst.Object, int]] = []
        self._sync_bus: Gst.Bus | None = None

    # -- construction (loop thread) --------------------------------------------------------
    def attach(self, pipeline: Gst.Pipeline, tee: Gst.Element, audio: AudioTap | None = None) -> None:
        """Build and link; the pipeline is running (the source announced its tracks, or
        recording restarts); data may already reach ``tee`` in the latter case."""
        suffix = f"-{self.serial}" if self.serial else ""
        queue = make_element("queue", f"record-queue{suffix}")
        queue.set_property("max-size-time", 5 * Gst.SECOND)
        queue.set_property("max-size-buffers", 0)
        queue.set_property("max-size-bytes", 0)
        queue.set_property("leaky", 2)  # a slow disk drops for the recorder only
        split = make_element("splitmuxsink", f"recorder{suffix}")
        split.set_property("max-size-time", int(self.record.segment_seconds * Gst.SECOND))
        if self.record.segment_bytes:
            split.set_property("max-size-bytes", self.record.segment_bytes)
        # Instances (not factory names + properties): 1.22 ignores muxer-properties unless
        # async-finalize is on; they must be set before the sink pad is linked.
        muxer_name = self._muxer_for(audio)
        muxer = make_element(muxer_name)
        if muxer_name != "matroskamux":
            muxer.set_property("fragment-duration", 1000)  # playable after a crash
        sink = make_element("filesink")
        sink.set_property("buffer-mode", 2)  # unbuffered: a SIGKILL loses no buffered bytes
        sink.set_property("async", False)
        split.set_property("muxer", muxer)
        split.set_property("sink", sink)
        self._handlers.append((muxer, muxer.connect("pad-added", self._on_muxer_pad)))
        self._handlers.append((split, split.connect("format-location-full", self._next_segment)))
        queue_sink = pad_of(queue, "sink")
        self._queue_src = pad_of(queue, "src")
        self._probes.append((queue_sink, queue_sink.add_probe(Gst.PadProbeType.BUFFER, self._on_entry)))
        self._pipeline, self._tee, self._queue, self._split = pipeline, tee, queue, split
        # Linked inside the pipeline (adding an element to a bin unlinks it), and the video pad by
        # name before any audio pad exists: Element.link would pick the free audio pad.
        pipeline.add(split)
        pipeline.add(queue)
        if not queue.link_pads("src", split, "video"):
            raise RuntimeError("cannot link record queue to splitmuxsink")
        audio_queue = self._audio_chain(pipeline, split, muxer_name, audio, suffix)
        # The pipeline runs (tracks announced, or recording restarted): the elements must take
        # its state before the tee pushes into them (a flushing pad would hand FLUSHING back to
        # the tee and stop the ingest).
        for element in (split, queue, audio_queue):
            if element is not None:
                element.sync_state_with_parent()
        if not tee.link(queue):
            raise RuntimeError("cannot link the tee to the record queue")
        if audio is not None and audio_queue is not None and not audio.tee.link(audio_queue):
            raise RuntimeError("cannot link the audio tee to the record audio queue")
        self._tee_pad = queue_sink.get_peer()
        if audio is not None and audio_queue is not None:
            self._audio_tee = audio.tee
            self._audio_tee_pad = pad_of(audio_queue, "sink").get_peer()

    def _muxer_for(self, audio: AudioTap | None) -> str:
        if self.record.format != RecordFormat.MP4:
            return "matroskamux"
        caps = audio.track.caps if audio is not None else None
        if caps is not None and not accepts("mp4mux", "audio_%u", caps):
            return "qtmux" if accepts("qtmux", "audio_%u", caps) else "mp4mux"  # G.711: QuickTime only
        return "mp4mux"

    def _audio_chain(
        self, pipeline: Gst.Pipeline, split: Gst.Element, muxer: str, audio: AudioTap | None, suffix: str
    ) -> Gst.Element | None:
        """The audio queue, linked to a new splitmuxsink audio pad; None: video only."""
        if audio is None:
            return None
        codec = audio.track.codec
        if not accepts(muxer, "audio_%u", audio.track.caps):
            log.warning("[%s] %s cannot hold %s audio: recording video only", self.stream_id, muxer, codec)
            return None
        queue = make_element("queue", f"record-audio-queue{suffix}")
        queue.set_property("max-size-time", 5 * Gst.SECOND)
        queue.set_property("max-size-buffers", 0)
        queue.set_property("max-size-bytes", 0)
        queue.set_property("leaky", 2)
        split_pad = split.request_pad_simple("audio_%u")
        if split_pad is None:
            log.warning("[%s] splitmuxsink gave no audio pad: recording video only", self.stream_id)
            return None
        pipeline.add(queue)
        if not queue.link_pads("src", split, split_pad.get_name()):
            pipeline.remove(queue)
            split.release_request_pad(split_pad)
            log.warning("[%s] cannot link the audio queue to splitmuxsink: video only", self.stream_id)
            return None
        self._audio_queue = queue
        self.audio_codec = codec
        # Synchronous: runs on the thread that posts the error, before the error flow returns.
        bus = pipeline.get_bus()
        bus.enable_sync_message_emission()
        self._sync_bus = bus
        self._handlers.append((bus, bus.connect("sync-message::error", self._on_sync_error)))
        return queue

    def _on_sync_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        # The posting element's streaming thread. An element of this branch failed: from now on
        # the audio queue drops what the audio tee pushes, so the flow error that follows cannot
        # reach the tee (tee returns any error upstream, into rtspsrc or the demuxer).
        if message.src is None or not self.owns(message.src):
            return
        self.failed = True
        queue = self._audio_queue
        if queue is not None and not self._audio_guard:
            self._audio_guard = pad_of(queue, "sink").add_probe(
                Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, _drop
            )

    # -- streaming threads ------------------------------------------------------------------
    def _on_entry(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        buffer = info.get_buffer()
        if buffer is None:
            return Gst.PadProbeReturn.OK
        queue_src = self._queue_src
        if self.failed or (
            queue_src is not None and queue_src.get_last_flow_return() <= Gst.FlowReturn.NOT_NEGOTIATED
        ):
            self.failed = True  # the recorder's error must not travel back into the tee
            self.frames_dropped += 1
            return Gst.PadProbeReturn.DROP
        if not self._keyframe_seen:
            if buffer.has_flags(Gst.BufferFlags.DELTA_UNIT):
                self.frames_skipped += 1
                return Gst.PadProbeReturn.DROP
            self._keyframe_seen = True
        self.frames_in += 1
        self.last_in_at = time.monotonic()
        return Gst.PadProbeReturn.OK

    def _on_muxer_pad(self, _muxer: Gst.Element, pad: Gst.Pad) -> None:
        # Frames are video frames: the audio pad is not counted.
        if pad.get_direction() == Gst.PadDirection.SINK and (pad.get_name() or "").startswith("video"):
            kinds = Gst.PadProbeType.BUFFER | Gst.PadProbeType.EVENT_DOWNSTREAM
            self._probes.append((pad, pad.add_probe(kinds, self._on_muxed)))

    def _on_muxed(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        # splitmuxsink reuses one muxer and ends each fragment with EOS into it: the frames
        # between two EOS are exactly the frames of one segment file.
        if info.type & Gst.PadProbeType.BUFFER:
            self._mux_counts[self._mux_sequence] += 1
            self.last_mux_at = time.monotonic()
        else:
            event = info.get_event()
            if event is not None and event.type == Gst.EventType.EOS:
                self._mux_sequence += 1
        return Gst.PadProbeReturn.OK

    def _next_segment(self, split: Gst.Element, _fragment: int, sample: Gst.Sample | None) -> str:
        start = _wall_time_of(split, sample)
        started = datetime.fromtimestamp(start, UTC)
        relative = render_template(self.record.file_template, self.stream_id, started)
        try:
            (self.directory / relative).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # filesink will fail to open and report it as the branch's error
            log.warning("[%s] cannot create the segment directory: %s", self.stream_id, exc)
        part, final = self.owner.claim_segment(relative)
        with self._lock:
            self.segments.append(OpenSegment(len(self.segments), part, final, start))
        return str(part)

    # -- bus messages (loop thread) ----------------------------------------------------------
    def owns(self, element: Gst.Object) -> bool:
        mine = (self._split, self._queue, self._audio_queue)
        return any(e is not None and inside(element, e) for e in mine)

    def on_message(self, message: Gst.Message) -> None:
        kind = message.type
        if kind == Gst.MessageType.ELEMENT:
            structure = message.get_structure()
            name = structure.get_name() if structure is not None else ""
            location = structure.get_string("location") if structure is not None else None
            if name == "splitmuxsink-fragment-opened" and location:
                segment = self._segment(location)
                if segment is not None:
                    segment.opened = True
                    self.owner.segment_opened(self, segment)
            elif name == "splitmuxsink-fragment-closed" and location and self._closed(location):
                self._complete_detach()  # the last segment of a runtime detach is closed
        elif kind == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            self.failed = True
            domain = error.domain if isinstance(error.domain, str) else GLib.quark_to_string(error.domain)
            category = "resource" if domain == _RESOURCE_DOMAIN or self._write_side(message) else "pipeline"
            source = message.src.get_name() if message.src is not None else "?"
            log.debug("[%s] recorder error from %s: %s (%s)", self.stream_id, source, error.message, debug)
            self.owner.branch_failed(self, f"{source}: {error.message}", category)
        elif kind == Gst.MessageType.WARNING:
            warning, _debug = message.parse_warning()
            log.warning("[%s] recorder warning: %s", self.stream_id, warning.message)

    def _write_side(self, message: Gst.Message) -> bool:
        # The queue's "Internal data stream error" after a sink failure is the same write failure.
        queues = (self._queue, self._audio_queue)
        return message.src is not None and any(q is not None and inside(message.src, q) for q in queues)

    def _segment(self, location: str) -> OpenSegment | None:
        with self._lock:
            return next((s for s in self.segments if str(s.part) == location), None)

    def _closed(self, location: str) -> bool:
        """Hand a closed segment over; True when it was the newest (a finish may end)."""
        with self._lock:
            segment = next((s for s in self.segments if str(s.part) == location), None)
            if segment is None or segment.handed_off:
                return False
            newest = segment is self.segments[-1]
            ending = self.state != BranchState.ATTACHED and self._eos_sent
            reason = self.close_reason if newest and ending else CloseReason.ROTATION
            segment.handed_off = True
            frames = self._mux_counts.get(segment.sequence)
        self.owner.segment_closed(self, segment, reason, frames, True)
        return newest and ending

    # -- leaving a running pipeline (loop thread) -------------------------------------------------
    def detach(self, reason: CloseReason) -> None:
        """Close the current segment and take the branch out; the ingest keeps running."""
        if self.state != BranchState.ATTACHED:
            return
        self.state = BranchState.DETACHING
        self.close_reason = reason
        queue = self._queue
        tee_pad = self._tee_pad
        if queue is None or tee_pad is None:
            self._complete_detach()
            return
        queue_sink = pad_of(queue, "sink")
        drain = not self.failed and self.frames_in > 0

        def _unlink(pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
            # Runs on the tee's streaming thread, or right here when the pad is idle.
            pad.unlink(queue_sink)
            if drain:
                self._eos_sent = True
                queue_sink.send_event(Gst.Event.new_eos())
            else:
                self._loop.schedule(self._complete_detach)
            self._loop.schedule(self._release_tee_pad)
            return Gst.PadProbeReturn.REMOVE

        self._detach_audio(drain)
        tee_pad.add_probe(Gst.PadProbeType.IDLE, _unlink)
        self._detach_timer = self._loop.timeout(DETACH_TIMEOUT, self._detach_timed_out)

    def _detach_audio(self, drain: bool) -> None:
        """Unlink the audio queue from the audio tee and end its track (splitmuxsink closes a
        segment only once every track has had EOS)."""
        audio_queue, audio_tee_pad = self._audio_queue, self._audio_tee_pad
        if audio_queue is None or audio_tee_pad is None:
            return
        audio_sink = pad_of(audio_queue, "sink")

        def _unlink_audio(pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
            pad.unlink(audio_sink)
            if drain:
                audio_sink.send_event(Gst.Event.new_eos())
            return Gst.PadProbeReturn.REMOVE

        audio_tee_pad.add_probe(Gst.PadProbeType.IDLE, _unlink_audio)

    def _detach_timed_out(self) -> bool:
        self._detach_timer = None
        if self.state == BranchState.DETACHING:
            log.warning("[%s] recording segment not closed within %.0f s", self.stream_id, DETACH_TIMEOUT)
            self._complete_detach()
        return False

    def _release_tee_pad(self) -> None:
        tee, pad = self._tee, self._tee_pad
        self._tee_pad = None
        if tee is not None and pad is not None and not self.attempt_ended:
            tee.release_request_pad(pad)
        audio_tee, audio_pad = self._audio_tee, self._audio_tee_pad
        self._audio_tee_pad = None
        if audio_tee is not None and audio_pad is not None and not self.attempt_ended:
            if audio_pad.is_linked():  # the IDLE probe has not run: nothing flows here any more
                peer = audio_pad.get_peer()
                if peer is not None:
                    audio_pad.unlink(peer)
            audio_tee.release_request_pad(audio_pad)

    def _complete_detach(self) -> None:
        """NULL off the loop thread (a writer stuck in write() must not freeze every stream),
        like the attempt's own disposal; then out of the bin, on the loop."""
        if self.state == BranchState.DONE or self.attempt_ended:
            return  # the attempt's disposal sets NULL and calls disposed()
        if self._detach_timer is not None:
            self._detach_timer.destroy()
            self._detach_timer = None
        self._release_tee_pad()
        self.state = BranchState.DONE
        # splitmuxsink first: a failed one holds the queues' threads in its output wait, and a
        # queue going to NULL first would wait for its thread for ever.
        elements = [e for e in (self._split, self._queue, self._audio_queue) if e is not None]

        pipeline = self._pipeline

        def _null() -> None:
            for element in elements:
                element.set_state(Gst.State.NULL)
            self._cut_cycles()
            self._loop.schedule(_remove)
            self._hand_off_remaining()
            self.owner.branch_done(self)

        def _remove() -> None:
            if pipeline is None or self.attempt_ended:
                return  # the whole pipeline is being disposed with them
            for element in elements:
                if element.get_parent() is pipeline:
                    pipeline.remove(element)

        threading.Thread(target=_null, name=f"dispose-recorder-{self.stream_id}", daemon=True).start()

    # -- disposal of the whole attempt (disposal thread) ----------------------------------------
    def needs_finish(self) -> bool:
        return self._split is not None and self.state == BranchState.ATTACHED and not self.failed

    def finish(self, pipeline: Gst.Pipeline, bus: Gst.Bus, deadline: float) -> None:
        """EOS into this branch only, then wait (bounded) for its newest segment to close."""
        self.state = BranchState.DETACHING
        if self._queue is None or self.frames_in == 0:
            return
        self._eos_sent = True
        pad_of(self._queue, "sink").send_event(Gst.Event.new_eos())
        if self._audio_queue is not None:
            pad_of(self._audio_queue, "sink").send_event(Gst.Event.new_eos())
        while time.monotonic() < deadline:
            message = bus.timed_pop_filtered(
                100 * Gst.MSECOND, Gst.MessageType.ELEMENT | Gst.MessageType.ERROR
            )
            if message is None or message.src is None or not self.owns(message.src):
                continue
            if message.type == Gst.MessageType.ERROR:
                return  # the recorder itself failed: nothing more will come
            structure = message.get_structure()
            location = structure.get_string("location") if structure is not None else None
            # Only the close of the newest segment ends the wait: a rotation that raced the
            # EOS closes the previous one and opens another.
            if structure is not None and location:
                if structure.get_name() == "splitmuxsink-fragment-opened":
                    segment = self._segment(location)
                    if segment is not None:
                        segment.opened = True
                elif structure.get_name() == "splitmuxsink-fragment-closed" and self._closed(location):
                    return
        log.warning("[%s] recording segment not closed within the drain time", self.stream_id)

    def disposed(self) -> None:
        self.state = BranchState.DONE
        self._cut_cycles()
        self._hand_off_remaining()
        self.owner.branch_done(self)

    def _cut_cycles(self) -> None:
        """Drop what C holds of this object (probe and signal closures) once its elements are NULL.

        A closure on a pad or element references this branch, which references the elements and
        the pipeline: a cycle through C that Python's collector cannot see, so every branch
        would keep its whole pipeline alive. The element references stay (``owns`` still
        recognises late bus messages); they no longer point back here.
        """
        probes, self._probes = self._probes, []
        handlers, self._handlers = self._handlers, []
        for pad, probe_id in probes:
            pad.remove_probe(probe_id)
        for element, handler_id in handlers:
            element.disconnect(handler_id)
        if self._sync_bus is not None:
            self._sync_bus.disable_sync_message_emission()
            self._sync_bus = None
        if self._audio_queue is not None and self._audio_guard:
            pad_of(self._audio_queue, "sink").remove_probe(self._audio_guard)
            self._audio_guard = 0
        self._pipeline = None
        self._tee = None
        self._tee_pad = None  # a detach's IDLE probe that never fired holds this branch too
        self._audio_tee = None
        self._audio_tee_pad = None

    def _hand_off_remaining(self) -> None:
        """After NULL every file is closed: hand over those no close message announced."""
        with self._lock:
            pending = [s for s in self.segments if not s.handed_off]
            for segment in pending:
                segment.handed_off = True
            last = self.segments[-1] if self.segments else None
            counts = dict(self._mux_counts)
        for segment in pending:
            # Only the newest can have been cut: splitmuxsink opens a file after closing the last.
            newest = segment is last
            reason = self.close_reason if newest else CloseReason.ROTATION
            self.owner.segment_closed(self, segment, reason, counts.get(segment.sequence), not newest)

    @property
    def frames_muxed(self) -> int:
        return sum(self._mux_counts.values())


def _drop(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    return Gst.PadProbeReturn.DROP


def _wall_time_of(element: Gst.Element, sample: Gst.Sample | None) -> float:
    """UTC epoch time of a sample from its running time (live pipelines hold a GOP first)."""
    now = time.time()
    clock = element.get_clock()
    if sample is None or clock is None:
        return now
    buffer = sample.get_buffer()
    segment = sample.get_segment()
    if buffer is None or segment is None:
        return now
    timestamp = buffer.pts if buffer.pts != Gst.CLOCK_TIME_NONE else buffer.dts
    running = segment.to_running_time(Gst.Format.TIME, timestamp)
    if Gst.CLOCK_TIME_NONE in (timestamp, running):
        return now
    elapsed = clock.get_time() - element.get_base_time()
    return now - max(0, elapsed - running) / Gst.SECOND
