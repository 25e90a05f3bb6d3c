"""One pipeline attempt for one stream: source bin ! queue [! clocksync] ! tee ! sinks.

A pipeline is built for each attempt and thrown away on any failure: rtspsrc and the
demuxers do not come back after their peer died, and a fresh pipeline is the only state
that is known to be clean. Everything here runs on the engine's loop thread, except
the one-shot first-frame probe, the bus sync handler (streaming threads; both only flip
flags) and the final NULL state change, which
``dispose`` does on a short-lived thread of its own so a hung element (a frozen RTSP
server holds rtspsrc for its tcp-timeout) can never block the loop that serves every other
stream. The pipeline is detached from everything when that happens, so nothing races it.

No Python runs per frame: frames and bytes are counted by an ``identity`` element in C and
polled by the engine tick (``poll_meter``). Three per-frame Python probes used to cost more
CPU than GStreamer itself (bench/results/latest.md).

Audio (see ``audio.py``): the branches are attached when the source bin announces its tracks,
before it lets any data out, so that each muxer gets its audio pad before its first buffer. A
source with audio gets ``[queue ! clocksync !] identity ! tee`` for it; the identity's buffer
count (read on a timer) is the audio watchdog, and its drop-probability switch is how an audio
problem (an error inside the audio chain, audio gone while video plays) drops audio only.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

from streamwarden.config import (  # noqa: E402
    FileSource,
    HttpSource,
    RtspSource,
    StreamSpec,
    Transport,
    rtsp_credentials,
)
from streamwarden.health import FrameMeter  # noqa: E402
from streamwarden.media.audio import AudioTap, AudioTrack  # noqa: E402
from streamwarden.media.buswait import bus_can_wait  # noqa: E402
from streamwarden.media.filesource import LoopingFileSource  # noqa: E402
from streamwarden.media.loop import LoopThread  # noqa: E402
from streamwarden.media.mediacheck import MediaSampler  # noqa: E402
from streamwarden.media.rtpstats import RtpStats  # noqa: E402
from streamwarden.media.rtspsource import RtspSourceBin  # noqa: E402
from streamwarden.media.weakcb import weak_callback  # noqa: E402
from streamwarden.policy.classify import RESOURCE_ERROR, ErrorReport  # noqa: E402
from streamwarden.redact import redact  # noqa: E402

log = logging.getLogger(__name__)

_ELEMENT_TIMEOUT_MESSAGES = frozenset({"GstRTSPSrcTimeout"})
# Audio that stopped while video went on for this long is dropped (its muxer pads get EOS), or
# every recorder would stall: splitmuxsink waits for every track before it closes a GOP.
AUDIO_STALL_SECONDS = 3.0
_AUDIO_CHECK_SECONDS = 1.0


@dataclass
class DisposalStats:
    """Counts pipelines whose NULL state change had to be abandoned (engine-wide)."""

    disposed: int = 0
    abandoned: int = 0


def _make(factory: str, name: str | None = None) -> Gst.Element:
    element = Gst.ElementFactory.make(factory, name)
    if element is None:
        raise RuntimeError(f"GStreamer element {factory!r} is missing: install the GStreamer plugin packages")
    return element


class StreamPipeline:
    """Builds and runs one attempt; reports frames and failures through callbacks."""

    def __init__(
        self,
        spec: StreamSpec,
        *,
        loop: LoopThread,
        meter: FrameMeter,
        on_first_frame: Callable[[], None],
        on_failure: Callable[[ErrorReport], None],
        transport: Transport = Transport.TCP,
        generation: int = 0,
        branches: Sequence[Branch] = (),
    ) -> None:
        self.spec = spec
        self.stream_id = spec.id
        self._loop = loop
        self._meter = meter
        self._on_first_frame = on_first_frame
        self._on_failure = on_failure
        self._bus_watched = False
        self._bus_handler = 0
        self.generation = generation
        self.branches = list(branches)
        self.start_error: ErrorReport | None = None  # why ``start`` returned False, when known
        self.pipeline = Gst.Pipeline.new(f"{spec.id}-{generation}")
        self.tracks_known = False
        self._disposing = False  # dispose() began (loop thread): nothing may attach any more
        self.audio: AudioTap | None = None
        self.audio_sampler: MediaSampler | None = None  # set when the source has audio
        self.audio_dropped = False
        self._paced = False
        self._audio_elements: list[Gst.Element] = []
        self._audio_meter: Gst.Element | None = None
        self._audio_timer: GLib.Source | None = None
        self._audio_buffers = 0
        self._audio_moved_at = 0.0
        self._build(transport)

    # -- construction -------------------------------------------------------------------------
    def _build(self, transport: Transport) -> None:
        source = self.spec.source
        pipeline = self.pipeline
        paced = False
        src_bin: RtspSourceBin | LoopingFileSource
        # Weak: the bin lives in the pipeline this object holds (a cycle through C otherwise).
        on_tracks = weak_callback(self._tracks_known)
        if isinstance(source, RtspSource):
            user, password, bare = rtsp_credentials(source)
            src_bin = RtspSourceBin(
                bare,
                schedule=self._loop.schedule,
                protocols="udp" if transport == Transport.UDP else "tcp",
                user=user,
                password=password,
                latency_ms=source.latency_ms,
                timeout_seconds=source.connect_timeout_seconds,
                name="source",
                on_tracks=on_tracks,
            )
        elif isinstance(source, FileSource):
            src_bin = LoopingFileSource(
                source.path, schedule=self._loop.schedule, name="source", on_tracks=on_tracks
            )
            paced = True
        elif isinstance(source, HttpSource):
            # Re-requesting the URL at its end makes a finished resource loop seamlessly and a
            # live HTTP stream that ended reconnect; a server that is gone errors at that GET.
            src_bin = LoopingFileSource(
                source.uri, schedule=self._loop.schedule, name="source", on_tracks=on_tracks
            )
            paced = True
        else:  # pragma: no cover - the config union is closed
            raise TypeError(f"unknown source {source!r}")

        queue = _make("queue", "ingest-queue")
        if paced:
            # A file runs ahead by up to 2 s so the per-loop demuxer rebuild is hidden.
            queue.set_property("max-size-time", 2 * Gst.SECOND)
            queue.set_property("max-size-buffers", 0)
            queue.set_property("max-size-bytes", 0)
        tee = _make("tee", "tee")
        tee.set_property("allow-not-linked", True)
        self.tee = tee
        self.source = src_bin
        self.src_bin = src_bin
        self._paced = paced
        pipeline.add(src_bin)
        pipeline.add(queue)
        pipeline.add(tee)
        if not src_bin.link(queue):
            raise RuntimeError("cannot link source to queue")
        counter = _make("identity", "meter")
        counter.set_property("silent", True)
        pipeline.add(counter)
        if paced:
            clocksync = _make("clocksync", "pace")
            pipeline.add(clocksync)
            queue.link(clocksync)
            clocksync.link(counter)
        else:
            queue.link(counter)
        counter.link(tee)
        self._counter = counter
        self.media_sampler = MediaSampler(_pad(counter, "src"), self.stream_id)
        self._probe_pad: Gst.Pad | None = _pad(tee, "sink")
        self._probe_id = self._probe_pad.add_probe(Gst.PadProbeType.BUFFER, self._on_first_buffer)

        discard = _make("fakesink", "discard")
        discard.set_property("sync", False)
        discard.set_property("async", False)
        add_chain(pipeline, tee, [_make("queue", "discard-queue"), discard])
        # The branches are attached in _tracks_known, once the source knows its tracks.

    def _tracks_known(self, track: AudioTrack | None) -> None:
        """Loop thread, once, while the source still holds all its data: audio chain, branches."""
        if self.tracks_known:
            return
        self.tracks_known = True
        if self._disposing:
            # Announced after dispose() began (the announcement was already queued on the loop):
            # attaching now would hang branches on a pipeline going to NULL, after their
            # disposed() ran, and keep them and the whole pipeline alive for good.
            return
        if track is not None:
            try:
                self.audio = self._build_audio(track)
            except Exception as exc:
                log.warning("[%s] cannot carry %s audio (%s): video only", self.stream_id, track.codec, exc)
                self.audio = None
        for branch in list(self.branches):
            try:
                branch.attach(self.pipeline, self.tee, self.audio)
            except Exception as exc:
                # Was a failure to build the attempt when branches were attached at construction.
                log.exception("[%s] cannot attach the %s branch", self.stream_id, branch.name)
                report = ErrorReport(kind="internal", message=f"cannot attach {branch.name}: {exc}")
                self._loop.schedule(functools.partial(self._on_failure, report))
                return

    def _build_audio(self, track: AudioTrack) -> AudioTap:
        """``audio`` pad ``[! queue ! clocksync] ! identity ! tee`` (loop thread, before data)."""
        elements: list[Gst.Element] = []
        if self._paced:
            queue = _make("queue", "audio-queue")
            queue.set_property("max-size-time", 2 * Gst.SECOND)  # as the video's: same lead
            queue.set_property("max-size-buffers", 0)
            queue.set_property("max-size-bytes", 0)
            elements += [queue, _make("clocksync", "audio-pace")]
        meter = _make("identity", "audio-meter")
        meter.set_property("silent", True)
        tee = _make("tee", "audio-tee")
        tee.set_property("allow-not-linked", True)
        elements += [meter, tee]
        self._audio_elements = elements
        for element in elements:
            self.pipeline.add(element)
        for upstream, downstream in pairwise(elements):
            if not upstream.link(downstream):
                raise RuntimeError(f"cannot link {upstream.get_name()} to {downstream.get_name()}")
        for element in reversed(elements):
            element.sync_state_with_parent()
        if not self.src_bin.link_pads("audio", elements[0], "sink"):
            raise RuntimeError("cannot link the source's audio pad")
        self._audio_meter = meter
        self.audio_sampler = MediaSampler(_pad(meter, "src"), self.stream_id)
        self._audio_moved_at = time.monotonic()
        watch = weak_callback(self._watch_audio, dead=False)
        self._audio_timer = self._loop.timeout(_AUDIO_CHECK_SECONDS, watch)
        log.info("[%s] carrying %s audio", self.stream_id, track.codec)
        return AudioTap(track, tee)

    def _watch_audio(self) -> bool:
        """Loop timer: audio that stopped while the video goes on is dropped (see AUDIO_STALL_SECONDS)."""
        meter = self._audio_meter
        if meter is None or self.audio_dropped:
            self._audio_timer = None
            return False
        count, _size = element_counts(meter)
        now = time.monotonic()
        if count != self._audio_buffers:
            self._audio_buffers = count
            self._audio_moved_at = now
            return True
        video_at = self._meter.last_frame_at
        if video_at is not None and video_at - self._audio_moved_at >= AUDIO_STALL_SECONDS:
            self._audio_timer = None
            self.drop_audio(f"no audio for {now - self._audio_moved_at:.0f} s while the video plays")
            return False
        return True

    def drop_audio(self, reason: str) -> None:
        """Loop thread: stop the audio for the rest of this attempt; video is untouched.

        The identity drops every further buffer, and EOS through the audio tee finishes each
        branch's audio pad, so muxers carry on with video alone.
        """
        if self.audio is None or self.audio_dropped:
            return
        self.audio_dropped = True
        log.warning("[%s] audio dropped: %s (video continues)", self.stream_id, reason)
        if self._audio_meter is not None:
            self._audio_meter.set_property("drop-probability", 1.0)
        tee_sink = self.audio.tee.get_static_pad("sink")
        if tee_sink is not None:
            tee_sink.send_event(Gst.Event.new_eos())

    # -- running -------------------------------------------------------------------------------
    def start(self) -> bool:
        """Attach the bus and go to PLAYING; False when the state change failed at once."""
        # Called on the loop thread: the signal watch attaches to its thread-default context.
        bus = self.pipeline.get_bus()
        if not bus_can_wait(bus):
            # Made out of descriptors, the bus has no poll: add_signal_watch would silently
            # install nothing and this attempt would run blind. A resource failure instead.
            self.start_error = ErrorReport(
                kind="error",
                domain=RESOURCE_ERROR,
                element="bus",
                message="cannot watch the pipeline bus: its poll could not be created (too many open files?)",
            )
            return False
        bus.add_signal_watch()
        bus.set_sync_handler(self._on_sync_message)
        self._bus_handler = bus.connect("message", self._on_bus_message)
        self._bus_watched = True
        result = self.pipeline.set_state(Gst.State.PLAYING)
        return bool(result != Gst.StateChangeReturn.FAILURE)

    def _on_first_buffer(self, _pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        """Once per attempt: PLAYING is entered at the first frame, not at the next poll."""
        self._probe_id = 0
        try:
            self._meter.first_frame_seen()
            self._loop.schedule(self._on_first_frame)
        except Exception as exc:
            # A streaming thread: uncaught, this would reach only sys.excepthook (no log, no
            # redaction) and the frame would be dropped. It is this stream's failure instead.
            log.exception("[%s] first-frame probe failed", self.stream_id)
            report = ErrorReport(kind="internal", message=f"frame probe: {type(exc).__name__}: {exc}")
            self._loop.schedule(lambda: self._on_failure(report))
        return Gst.PadProbeReturn.REMOVE

    def poll_meter(self) -> None:
        """Copy the C counters into the meter (loop thread, every engine tick)."""
        frames, size = element_counts(self._counter)
        self._meter.observe(frames, size)

    def transport_stats(self) -> RtpStats | None:
        """RTP/RTCP counters of an RTSP source (None for files, HTTP, or before SETUP)."""
        source = self.source
        return source.transport_stats() if isinstance(source, RtspSourceBin) else None

    def nominal_fps(self) -> float | None:
        """The frame rate the source's caps declare (None when absent or 0/1, as RTSP often is)."""
        caps = _pad(self._counter, "src").get_current_caps()
        if caps is None or not caps.get_size():
            return None
        ok, numerator, denominator = caps.get_structure(0).get_fraction("framerate")
        if not ok or numerator <= 0 or denominator <= 0:
            return None
        return float(numerator) / float(denominator)

    def _on_sync_message(self, _bus: Gst.Bus, message: Gst.Message) -> Gst.BusSyncReply:
        """Runs in the posting (streaming) thread, before that thread's flow error travels on.

        A branch that errors must be cut off before its error flow return reaches the tee and
        stops the ingest; the async bus watch would see it a frame or more too late.
        """
        if message.type == Gst.MessageType.ERROR and message.src is not None:
            for branch in self.branches:
                if branch.owns(message.src):
                    branch.on_error_sync()
                    break
        return Gst.BusSyncReply.PASS

    def _on_bus_message(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        source = message.src
        for branch in self.branches:
            if source is not None and branch.owns(source):
                branch.on_message(message)  # a sink's trouble is the sink's, not the ingest's
                return
        if source is not None and self._is_audio(source):
            self._on_audio_message(message)  # an audio problem costs the audio, not the stream
            return
        report = _report_from_message(message)
        if report is not None:
            self._on_failure(report)

    def _is_audio(self, source: Gst.Object) -> bool:
        audio = [*self._audio_elements, *self.src_bin.audio_elements]
        return any(inside(source, element) for element in audio)

    def _on_audio_message(self, message: Gst.Message) -> None:
        name = message.src.get_name() if message.src is not None else "?"
        if message.type == Gst.MessageType.ERROR:
            error, _debug = message.parse_error()
            self.drop_audio(f"{name}: {error.message}")
        elif message.type == Gst.MessageType.WARNING:
            warning, _debug = message.parse_warning()
            log.warning("[%s] audio warning from %s: %s", self.stream_id, name, warning.message)

    def add_branch(self, branch: Branch) -> None:
        """Hang a branch off the running tee (loop thread), e.g. recording restarted at runtime.

        Before the source announced its tracks it is only listed: ``_tracks_known`` attaches it.
        """
        self.branches.append(branch)
        if not self.tracks_known or self._disposing:
            return
        try:
            branch.attach(self.pipeline, self.tee, None if self.audio_dropped else self.audio)
        except Exception:
            self.branches.remove(branch)
            raise

    def remove_branch(self, branch: Branch) -> None:
        """Forget a branch that has taken its elements out of the running pipeline itself."""
        if branch in self.branches:
            self.branches.remove(branch)

    # -- tear-down -----------------------------------------------------------------------------
    def detach(self) -> None:
        """Stop reporting: after this no callback of this attempt reaches the supervisor."""
        if self._bus_watched:
            bus = self.pipeline.get_bus()
            bus.disconnect(self._bus_handler)
            bus.remove_signal_watch()
            bus.set_sync_handler(None)  # its closure holds this object: a cycle through C
            self._bus_watched = False
        self._on_failure = _ignore_report
        self._on_first_frame = _ignore
        if self._audio_timer is not None:
            self._audio_timer.destroy()
            self._audio_timer = None

    def dispose(self, stats: DisposalStats, timeout: float, finalize_recording: bool = True) -> None:
        """Detach, let the branches finish (segments closed), then set NULL off the loop thread."""
        self._disposing = True
        self.poll_meter()
        self.media_sampler.close()
        if self.audio_sampler is not None:
            self.audio_sampler.close()
        self.detach()
        pipeline = self.pipeline
        finishing = [
            b for b in self.branches if finalize_recording and self._meter.frames > 0 and b.needs_finish()
        ]
        # Messages the watch has not dispatched stay: a branch's wait ends on its splitmuxsink's
        # forwarded EOS only, and an earlier rotation's close tells it that segment is complete.
        bus = pipeline.get_bus()

        def _dispose() -> None:
            deadline = time.monotonic() + min(timeout, 3.0)
            for branch in finishing:
                try:
                    branch.finish(pipeline, bus, deadline)
                except Exception:
                    log.exception("[%s] branch %s failed to finish", self.stream_id, branch.name)
            _set_null(pipeline, self.stream_id, stats, timeout)
            # The probe's closure holds this object, which holds the pipeline that holds the probe:
            # a cycle through C that Python's collector cannot see. Cut it, or every attempt leaks.
            if self._probe_pad is not None and self._probe_id:
                self._probe_pad.remove_probe(self._probe_id)
            self._probe_pad = None
            for branch in self.branches:
                try:
                    branch.disposed()
                except Exception:
                    log.exception("[%s] branch %s failed after disposal", self.stream_id, branch.name)

        threading.Thread(target=_dispose, name=f"dispose-{self.stream_id}", daemon=True).start()


class Branch(Protocol):
    """A consumer hanging off a stream's tee (recorder, RTSP re-serve, ...).

    Its elements live in the attempt's pipeline; bus messages from inside it go to
    ``on_message`` instead of failing the stream, so a full disk stops the recorder, not
    the ingest. ``finish`` runs on the disposal thread (never the loop) before NULL.
    """

    name: str

    def attach(self, pipeline: Gst.Pipeline, tee: Gst.Element, audio: AudioTap | None) -> None:
        """Link into ``pipeline`` (loop thread; it may be running, but no data reached ``tee``
        yet unless this is a runtime attach). ``audio``: the audio tee, when the source has audio
        and the branch wants it; its pad must be requested before the first buffer reaches a muxer.
        """
        ...

    def owns(self, element: Gst.Object) -> bool: ...

    def on_message(self, message: Gst.Message) -> None: ...

    def on_error_sync(self) -> None:
        """An element of this branch posts an ERROR (its streaming thread): stop taking data."""
        ...

    def needs_finish(self) -> bool: ...

    def finish(self, pipeline: Gst.Pipeline, bus: Gst.Bus, deadline: float) -> None: ...

    def disposed(self) -> None: ...


def add_chain(pipeline: Gst.Bin, tee: Gst.Element, elements: list[Gst.Element]) -> None:
    """Add ``elements``, link them in order and hang the first off ``tee``.

    Into a running pipeline too: they take its state before the tee is linked, since a tee
    pushing into a pad that is still flushing would get FLUSHING back and stop the ingest.
    """
    for element in elements:
        pipeline.add(element)
    for upstream, downstream in pairwise(elements):
        if not upstream.link(downstream):
            raise RuntimeError(f"cannot link {upstream.get_name()} to {downstream.get_name()}")
    for element in reversed(elements):
        element.sync_state_with_parent()
    if not tee.link(elements[0]):
        raise RuntimeError(f"cannot link tee to {elements[0].get_name()}")


def element_counts(element: Gst.Element) -> tuple[int, int]:
    """(buffers, bytes) an ``identity`` has passed, from the counters it keeps in C."""
    stats = element.get_property("stats")
    if stats is None:
        return 0, 0
    ok_buffers, buffers = stats.get_uint64("num-buffers")
    ok_bytes, size = stats.get_uint64("num-bytes")
    return (buffers if ok_buffers else 0), (size if ok_bytes else 0)


def inside(obj: Gst.Object, ancestor: Gst.Element) -> bool:
    current: Gst.Object | None = obj
    while current is not None:
        if current is ancestor:
            return True
        current = current.get_parent()
    return False


def make_element(factory: str, name: str | None = None) -> Gst.Element:
    return _make(factory, name)


def pad_of(element: Gst.Element, name: str) -> Gst.Pad:
    return _pad(element, name)


def _pad(element: Gst.Element, name: str) -> Gst.Pad:
    pad = element.get_static_pad(name)
    if pad is None:
        raise RuntimeError(f"{element.get_name()} has no pad {name!r}")
    return pad


def _set_null(pipeline: Gst.Pipeline, stream_id: str, stats: DisposalStats, timeout: float) -> None:
    """Set NULL on the calling (non-loop) thread; a watchdog reports if it hangs."""
    finished = threading.Event()

    def _watch() -> None:
        if not finished.wait(timeout):
            stats.abandoned += 1
            log.warning("[%s] pipeline did not reach NULL within %.1f s: abandoned", stream_id, timeout)

    watcher = threading.Thread(target=_watch, name=f"dispose-watch-{stream_id}", daemon=True)
    watcher.start()
    pipeline.set_state(Gst.State.NULL)
    finished.set()
    stats.disposed += 1


def _ignore_report(_report: ErrorReport) -> None:
    return None


def _ignore() -> None:
    return None


def _report_from_message(message: Gst.Message) -> ErrorReport | None:
    """Turn a bus message into plain data for the classifier (None: not a failure signal)."""
    kind = message.type
    element = (message.src.get_name() or "") if message.src is not None else ""
    factory = ""
    if isinstance(message.src, Gst.Element):
        element_factory = message.src.get_factory()
        factory = (element_factory.get_name() or "") if element_factory is not None else ""
    label = f"{factory}:{element}" if factory else element
    if kind in (Gst.MessageType.ERROR, Gst.MessageType.WARNING):
        if kind == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
        else:
            error, debug = message.parse_warning()
        return ErrorReport(
            kind="error" if kind == Gst.MessageType.ERROR else "warning",
            domain=GLib.quark_to_string(error.domain) if isinstance(error.domain, int) else str(error.domain),
            code=int(error.code),
            element=label,
            message=redact(error.message or ""),
            debug=redact(debug or ""),
        )
    if kind == Gst.MessageType.EOS:
        return ErrorReport(kind="eos", element=label, message="end of stream")
    if kind == Gst.MessageType.ELEMENT:
        structure = message.get_structure()
        if structure is not None and structure.get_name() in _ELEMENT_TIMEOUT_MESSAGES:
            return ErrorReport(kind="timeout", element=label, message=redact(structure.to_string()))
    return None
