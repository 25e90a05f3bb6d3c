"""Recording branch: one attempt's ``queue ! splitmuxsink`` on the stream's tee, pass-through.

Muxer set-ups follow the SIGKILL table in shared/notes (re-measured for docs/recording.md):
Matroska through an unbuffered filesink, or MP4 with 1 s fragments, keep the file being
written playable. Files are written as ``<name>.part.<ext>`` and handed to the recorder
(``BranchOwner``) when closed, which validates, renames and indexes them off the loop.

A write failure (disk full, EIO, directory gone) must never reach the ingest: splitmuxsink
errors make the record queue's task stop with a flow error, and the next buffer the tee
pushes into that queue would get the error back and end the whole pipeline. The branch is
``identity ! valve ! queue ! identity ! splitmuxsink``: the pipeline's bus sync handler calls
``on_error_sync`` in the erroring thread, before its flow error travels upstream, and the
valve starts dropping (in C, returning OK to the tee); the owner then takes the branch out
of the running pipeline and retries with a fresh one. No Python runs per frame: the two
identities count frames in and out (liveness: in without out is a stuck writer), and the
keyframe gate is a probe that removes itself at the first keyframe.

Audio, when the source has it: ``audio tee ! valve ! queue ! splitmuxsink.audio_0``, requested
before the first buffer (muxers take no pad later). Video stays the reference: segments still
start on a keyframe and the frame counts are video frames. G.711 does not fit MP4 (mp4mux refuses
it): for MP4 with G.711 the muxer is qtmux, a QuickTime file under the .mp4 name. A failure closes
the audio valve together with the video one. Audio before the first video keyframe is muxed as it
comes (splitmuxsink cuts on the video).

Threads: ``attach``/``detach``/``on_message``/``poll`` run on the loop thread; the gate probe,
``on_error_sync`` and ``format-location-full`` on streaming threads (flags and a path only);
``finish`` and
``disposed`` on the pipeline's disposal thread. A branch leaving a running pipeline sets its
elements to NULL on a short-lived ``dispose-recorder-*`` thread, for the same reason the
pipeline does: a writer stuck in ``write()`` (a hung NFS mount) must not freeze the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Protocol

from streamwarden.config import RecordConfig, RecordFormat
from streamwarden.media.audio import AudioTap, accepts
from streamwarden.media.buswait import BusWaiter
from streamwarden.media.gst import GLib, Gst
from streamwarden.media.loop import LoopThread
from streamwarden.media.pipeline import element_counts, inside, make_element, pad_of
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
    closed: bool = False  # splitmuxsink reported it closed (its file is complete)
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
        self.frames_skipped = 0  # frames before the first keyframe (a segment starts on one)
        self.attached_at = time.monotonic()
        self.last_in_at: float | None = None  # last poll that saw frames enter / reach the muxer
        self.last_mux_at: float | None = None
        self._seen_in = 0
        self._seen_out = 0
        self._in_at_failure: int | None = None
        self._gate: Gst.Element | None = None
        self._valve: Gst.Element | None = None
        self._out: Gst.Element | None = None
        self._audio_valve: Gst.Element | None = None
        self._audio_queue: Gst.Element | None = None
        self._audio_tee: Gst.Element | None = None
        self._audio_tee_pad: Gst.Pad | None = None
        self.audio_codec: str | None = None  # what this branch records besides video
        self._eos_sent = False
        self._draining = False  # a runtime detach drains (EOS) rather than cuts
        self._end_seen = False  # splitmuxsink's forwarded EOS arrived: every file is closed
        self._lock = threading.Lock()
        self._pipeline: Gst.Pipeline | None = None
        self._tee: Gst.Element | None = None
        self._tee_pad: Gst.Pad | None = None
        self._queue: Gst.Element | None = None
        self._split: Gst.Element | None = None
        self._detach_timer: GLib.Source | None = None
        # Probes and signal handlers hold this object from C: cut once NULL (see _cut_cycles).
        self._probes: list[tuple[Gst.Pad, int]] = []
        self._handlers: list[tuple[Gst.Element, int]] = []

    # -- construction (loop thread) --------------------------------------------------------
    def attach(self, pipeline: Gst.Pipeline, tee: Gst.Element, audio: AudioTap | None = None) -> None:
        """Build and link; the pipeline is running (the source announced its tracks, or
        recording restarts); data may already reach ``tee`` in the latter case."""
        suffix = f"-{self.serial}" if self.serial else ""
        gate = make_element("identity", f"record-in{suffix}")
        gate.set_property("silent", True)
        valve = make_element("valve", f"record-valve{suffix}")
        out = make_element("identity", f"record-out{suffix}")
        out.set_property("silent", True)
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
        # The only sign that splitmuxsink is done with an EOS: it drops its sink's EOS at every
        # rotation and passes the last one on, which message-forward posts as "GstBinForwarded"
        # right after the last fragment-closed. A fragment-closed alone cannot tell a rotation
        # racing the EOS (splitmuxsink holds a GOP) from the end (see _closed).
        split.set_property("message-forward", True)
        self._handlers.append((split, split.connect("format-location-full", self._next_segment)))
        entry = pad_of(gate, "sink")
        self._probes.append((entry, entry.add_probe(Gst.PadProbeType.BUFFER, self._until_keyframe)))
        self._pipeline, self._tee, self._queue, self._split = pipeline, tee, queue, split
        self._gate, self._valve, self._out = gate, valve, out
        chain = [gate, valve, queue, out]
        # Linked inside the pipeline (adding an element to a bin unlinks it), and the video pad by
        # name before any audio pad exists: Element.link would pick the free audio pad.
        for element in (*chain, split):
            pipeline.add(element)
        for upstream, downstream in pairwise(chain):
            if not upstream.link(downstream):
                raise RuntimeError(f"cannot link {upstream.get_name()} in the recorder")
        if not out.link_pads("src", split, "video"):
            raise RuntimeError("cannot link the recorder to splitmuxsink")
        audio_chain = self._audio_chain(pipeline, split, muxer_name, audio, suffix)
        # The pipeline runs: the elements must take its state before the tee pushes into them
        # (a flushing pad would hand FLUSHING back to the tee and stop the ingest).
        for element in (split, *reversed(chain), *reversed(audio_chain)):
            element.sync_state_with_parent()
        tee_pad = tee.request_pad_simple("src_%u")
        if tee_pad is None or tee_pad.link(entry) != Gst.PadLinkReturn.OK:
            raise RuntimeError("cannot link the tee to the recorder")
        self._tee_pad = tee_pad
        if audio is not None and audio_chain:
            audio_entry = pad_of(audio_chain[0], "sink")
            audio_pad = audio.tee.request_pad_simple("src_%u")
            if audio_pad is None or audio_pad.link(audio_entry) != Gst.PadLinkReturn.OK:
                raise RuntimeError("cannot link the audio tee to the recorder")
            self._audio_tee, self._audio_tee_pad = audio.tee, audio_pad

    def _muxer_for(self, audio: AudioTap | None) -> str:
        if self.record.format != RecordFormat.MP4:
            return "matroskamux"
        caps = audio.track.caps if audio is not None else None
        if caps is not None and not accepts("mp4mux", "audio_%u", caps):
            return "qtmux" if accepts("qtmux", "audio_%u", caps) else "mp4mux"  # G.711: QuickTime only
        return "mp4mux"

    def _audio_chain(
        self, pipeline: Gst.Pipeline, split: Gst.Element, muxer: str, audio: AudioTap | None, suffix: str
    ) -> list[Gst.Element]:
        """``valve ! queue`` linked to a new splitmuxsink audio pad; [] records video only."""
        if audio is None:
            return []
        codec = audio.track.codec
        if not accepts(muxer, "audio_%u", audio.track.caps):
            log.warning("[%s] %s cannot hold %s audio: recording video only", self.stream_id, muxer, codec)
            return []
        valve = make_element("valve", f"record-audio-valve{suffix}")
        queue = make_element("queue", f"record-audio-queue{suffix}")
        queue.set_property("max-size-time", 5 * Gst.SECOND)
        queue.set_property("max-size-buffers", 0)
        queue.set_property("max-size-bytes", 0)
        queue.set_property("leaky", 2)
        split_pad = split.request_pad_simple("audio_%u")
        if split_pad is None:
            log.warning("[%s] splitmuxsink gave no audio pad: recording video only", self.stream_id)
            return []
        pipeline.add(valve)
        pipeline.add(queue)
        if not valve.link(queue) or not queue.link_pads("src", split, split_pad.get_name()):
            pipeline.remove(valve)
            pipeline.remove(queue)
            split.release_request_pad(split_pad)
            log.warning("[%s] cannot link the audio queue to splitmuxsink: video only", self.stream_id)
            return []
        self._audio_valve, self._audio_queue = valve, queue
        self.audio_codec = codec
        return [valve, queue]

    # -- streaming threads ------------------------------------------------------------------
    def _until_keyframe(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        """A segment must start on a keyframe: drop until one, then remove this probe."""
        buffer = info.get_buffer()
        if buffer is not None and buffer.has_flags(Gst.BufferFlags.DELTA_UNIT):
            self.frames_skipped += 1
            return Gst.PadProbeReturn.DROP
        with self._lock:
            self._probes = [(p, i) for p, i in self._probes if p is not pad]
        return Gst.PadProbeReturn.REMOVE

    def on_error_sync(self) -> None:
        """Close the valve before the error's flow return reaches the tee (streaming thread)."""
        self._mark_failed()

    def _mark_failed(self) -> None:
        if self._in_at_failure is None:
            self._in_at_failure = self._count(self._gate)
        self.failed = True
        for valve in (self._valve, self._audio_valve):
            if valve is not None:
                valve.set_property("drop", True)

    @staticmethod
    def _count(element: Gst.Element | None) -> int:
        return 0 if element is None else element_counts(element)[0]

    @property
    def frames_in(self) -> int:
        """Frames the recorder accepted (from its first keyframe until it failed)."""
        return self._count(self._gate) if self._in_at_failure is None else self._in_at_failure

    @property
    def frames_dropped(self) -> int:
        """Frames the closed valve dropped after the branch failed."""
        return 0 if self._in_at_failure is None else self._count(self._gate) - self._in_at_failure

    def poll(self) -> None:
        """Note when frames last entered and last reached the muxer (loop thread, each tick)."""
        now = time.monotonic()
        entered, written = self._count(self._gate), self._count(self._out)
        if entered > self._seen_in:
            self._seen_in, self.last_in_at = entered, now
        if written > self._seen_out:
            self._seen_out, self.last_mux_at = written, now

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
        return any(e is not None and inside(element, e) for e in self._elements())

    def _elements(self) -> list[Gst.Element]:
        """Every element of the branch, upstream first."""
        parts = (self._gate, self._valve, self._queue, self._out, self._audio_valve, self._audio_queue)
        return [e for e in (*parts, self._split) if e is not None]

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
            elif name == "splitmuxsink-fragment-closed" and location:
                self._closed(location)
            elif _is_end_of_stream(structure) and self._eos_sent and self.state == BranchState.DETACHING:
                self._ended()
                self._complete_detach()  # the last segment of a runtime detach is closed
        elif kind == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            self._mark_failed()
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
        return message.src is not None and any(
            e is not None and inside(message.src, e) for e in (self._queue, self._out, self._audio_queue)
        )

    def _segment(self, location: str) -> OpenSegment | None:
        with self._lock:
            return next((s for s in self.segments if str(s.part) == location), None)

    def _closed(self, location: str) -> None:
        """Hand a segment closed by a rotation over; keep the newest once the EOS is sent.

        After the EOS, the newest segment known may be closed by a rotation that raced it: the
        input had decided to rotate up to a GOP earlier, and the next file is named only after
        this close. Taking it for the last one set NULL before that next file was written (the
        frames since the rotation were lost at every stop). ``_ended`` tells.
        """
        with self._lock:
            segment = next((s for s in self.segments if str(s.part) == location), None)
            if segment is None or segment.handed_off:
                return
            segment.closed = True
            ending = self.state != BranchState.ATTACHED and self._eos_sent
            if ending and segment is self.segments[-1]:
                return
            segment.handed_off = True
        self.owner.segment_closed(self, segment, CloseReason.ROTATION, None, True)

    def _ended(self) -> None:
        """splitmuxsink passed the EOS on: every file it opened is closed, the newest last."""
        with self._lock:
            pending = [s for s in self.segments if not s.handed_off]
            for segment in pending:
                segment.handed_off = True
            last = self.segments[-1] if self.segments else None
            self._end_seen = True
        for segment in pending:
            reason = self.close_reason if segment is last else CloseReason.ROTATION
            self.owner.segment_closed(self, segment, reason, None, True)

    # -- leaving a running pipeline (loop thread) -------------------------------------------------
    def detach(self, reason: CloseReason) -> None:
        """Close the current segment and take the branch out; the ingest keeps running."""
        if self.state != BranchState.ATTACHED:
            return
        self.state = BranchState.DETACHING
        self.close_reason = reason
        gate = self._gate
        tee_pad = self._tee_pad
        if gate is None or tee_pad is None:
            self._complete_detach()
            return
        queue_sink = pad_of(gate, "sink")
        drain = not self.failed and self.frames_in > 0
        self._draining = drain

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

        tee_pad.add_probe(Gst.PadProbeType.IDLE, _unlink)
        self._detach_audio(drain)
        self._detach_timer = self._loop.timeout(DETACH_TIMEOUT, self._detach_timed_out)

    def _detach_audio(self, drain: bool) -> None:
        """Unlink the audio chain from the audio tee and end its track (splitmuxsink closes a
        segment only once every track has had EOS)."""
        audio_valve, audio_tee_pad = self._audio_valve, self._audio_tee_pad
        if audio_valve is None or audio_tee_pad is None:
            return
        audio_sink = pad_of(audio_valve, "sink")

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
        elements = self._elements()

        pipeline = self._pipeline

        def _null() -> None:
            # Downstream first, as a bin does. A splitmuxsink that failed ("Timestamping error")
            # holds the record queue's streaming thread in its input, waiting for an output that
            # will never come; only its own NULL wakes it. The queue first would wait for that
            # thread's stream lock for ever, and hold the pipeline's disposal with it.
            for element in reversed(elements):
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
        """Attached and healthy, or a runtime detach still draining: NULL now cuts its last file."""
        if self._split is None or self.failed:
            return False
        if self.state == BranchState.ATTACHED:
            return True
        return self.state == BranchState.DETACHING and self._draining and not self._end_seen

    def finish(self, pipeline: Gst.Pipeline, bus: Gst.Bus, deadline: float) -> None:
        """EOS into this branch only (unless a runtime detach sent it), then wait (bounded) for
        splitmuxsink to finish its last file."""
        draining = self.state == BranchState.DETACHING  # operator stop or disk pause, then disposal
        self.state = BranchState.DETACHING
        if self._gate is None or (not draining and self.frames_in == 0):
            return
        # Bounded and non-spinning even on a bus made out of descriptors (see media/buswait.py).
        with BusWaiter(bus, Gst.MessageType.ELEMENT | Gst.MessageType.ERROR) as waiter:
            if not draining:
                self._eos_sent = True
                pad_of(self._gate, "sink").send_event(Gst.Event.new_eos())
                if self._audio_valve is not None:
                    pad_of(self._audio_valve, "sink").send_event(Gst.Event.new_eos())
            if self._wait_closed(waiter, deadline):
                return
        log.warning("[%s] recording segment not closed within the drain time", self.stream_id)

    def _wait_closed(self, waiter: BusWaiter, deadline: float) -> bool:
        """True once splitmuxsink has closed its last file or failed; False at the deadline."""
        while True:
            message = waiter.pop(deadline)
            if message is None:
                return False
            if message.src is None or not self.owns(message.src):
                continue
            if message.type == Gst.MessageType.ERROR:
                return True  # the recorder itself failed: nothing more will come
            structure = message.get_structure()
            if structure is None:
                continue
            if _is_end_of_stream(structure):
                self._ended()
                return True
            location = structure.get_string("location")
            if location and structure.get_name() == "splitmuxsink-fragment-opened":
                segment = self._segment(location)
                if segment is not None:
                    segment.opened = True
            elif location and structure.get_name() == "splitmuxsink-fragment-closed":
                self._closed(location)

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
        for segment in pending:
            # Only the newest can have been cut: splitmuxsink opens a file after closing the last.
            newest = segment is last
            reason = self.close_reason if newest else CloseReason.ROTATION
            self.owner.segment_closed(self, segment, reason, None, segment.closed or not newest)


def _is_end_of_stream(structure: Gst.Structure | None) -> bool:
    """splitmuxsink's forwarded EOS (message-forward): it has finished its last file."""
    if structure is None or structure.get_name() != "GstBinForwarded":
        return False
    inner = structure.get_value("message")
    return isinstance(inner, Gst.Message) and inner.type == Gst.MessageType.EOS


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
