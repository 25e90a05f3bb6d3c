"""Reading finished or crashed segment files back with GStreamer: validate, count, remux.

These run short private pipelines and poll their bus without a main loop, so they block:
call them from the recording worker threads, never from the engine's loop thread. ffmpeg is
never used here (it is the tests' independent judge only).

``scan`` demuxes a whole file as fast as it can (no clock): it proves the file opens and
plays to the end, and gives (video) frame count and duration. ``remux`` rewrites a file that was
cut off (a crash, a write error) into a properly closed one: MKV gets its duration and
cues, MP4 its index; the audio track, if any, is carried along (QuickTime files, the recorder's
MP4 with G.711, stay QuickTime).

A pass that could not open or read its file at all (a resource error before any frame: out of
descriptors, permissions) says so in ``MediaScan.unreadable``: that is no verdict on the file,
and callers must not delete it for "holding no frame". Bus waits go through ``BusWaiter``,
which stays bounded when the bus was created out of descriptors and cannot block.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamwarden.media.audio import audio_codec_of
from streamwarden.media.buswait import BusWaiter
from streamwarden.media.gst import GLib, Gst

__all__ = ["MediaScan", "remux", "scan"]

log = logging.getLogger(__name__)

_MUXERS = {"mkv": "matroskamux", "mp4": "mp4mux"}
# Our own files are read with their container's demuxer, not parsebin: parsebin drops an error
# its demuxer posts while being plugged (seen with a header-only MP4 left by a SIGKILL, about 1
# run in 6 with other pipelines starting), and the pass then waits for its whole timeout.
_DEMUXERS = {"mkv": "matroskademux", "mp4": "qtdemux"}
_TEMPORARY_SUFFIX = ".remux"
_RESOURCE_DOMAIN = "gst-resource-error-quark"


@dataclass(frozen=True)
class MediaScan:
    """What one pass over a file found."""

    frames: int
    duration: float  # seconds from the first frame's start to the last frame's end
    error: str | None  # the first error, if any (frames before it were read)
    caps: str | None = None
    unreadable: bool = False  # a resource error before any frame: the file was never really read

    @property
    def playable(self) -> bool:
        return self.frames > 0

    @property
    def clean(self) -> bool:
        return self.frames > 0 and self.error is None


class _VideoCounter:
    """Counts video buffers and their time span on a pad (a streaming thread)."""

    def __init__(self) -> None:
        self.frames = 0
        self.first: int | None = None
        self.end = 0
        self.caps: str | None = None

    def probe(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        buffer = info.get_buffer()
        if buffer is None:
            return Gst.PadProbeReturn.OK
        self.frames += 1
        pts = buffer.pts if buffer.pts != Gst.CLOCK_TIME_NONE else buffer.dts
        if pts != Gst.CLOCK_TIME_NONE:
            if self.first is None or pts < self.first:
                self.first = pts
            duration = buffer.duration if buffer.duration != Gst.CLOCK_TIME_NONE else 0
            self.end = max(self.end, pts + duration)
        return Gst.PadProbeReturn.OK

    @property
    def duration(self) -> float:
        return 0.0 if self.first is None else max(0, self.end - self.first) / Gst.SECOND


def _make(factory: str, name: str | None = None) -> Gst.Element:
    element = Gst.ElementFactory.make(factory, name)
    if element is None:
        raise RuntimeError(f"GStreamer element {factory!r} is missing")
    return element


@dataclass
class _Outcome:
    error: str | None = None
    resource: bool = False  # the first error came from the resource domain (open, read, write)


def _run(pipeline: Gst.Pipeline, timeout: float, on_error: Callable[[], bool] | None = None) -> _Outcome:
    """PLAYING until EOS; returns the first error, if any.

    ``on_error`` answers an error upstream (a truncated file) by sending EOS into the muxer,
    so it still writes a finished file from what was read; it returns False when it cannot.
    """
    outcome = _Outcome()
    # Before PLAYING: on a bus made out of descriptors only a sync handler sees the errors.
    waiter = BusWaiter(pipeline.get_bus(), Gst.MessageType.EOS | Gst.MessageType.ERROR)
    eos_sent = False
    try:
        if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            message = waiter.pop(time.monotonic())
            if message is not None and message.type == Gst.MessageType.ERROR:
                _note_error(outcome, message)
            else:  # elements fail to start on an open or a thread: not the file's fault
                outcome.error, outcome.resource = "cannot start the pipeline", True
            return outcome
        deadline = time.monotonic() + timeout
        while True:
            message = waiter.pop(deadline)
            if message is None:
                outcome.error = outcome.error or f"timed out after {timeout:.0f} s"
                return outcome
            if message.type == Gst.MessageType.EOS:
                return outcome
            first = outcome.error is None
            _note_error(outcome, message)
            if not first or on_error is None or eos_sent or not on_error():
                return outcome
            eos_sent = True
            deadline = min(deadline, time.monotonic() + 5.0)
    finally:
        pipeline.set_state(Gst.State.NULL)
        waiter.close()


def _note_error(outcome: _Outcome, message: Gst.Message) -> None:
    if outcome.error is not None:
        return
    error, _debug = message.parse_error()
    outcome.error = str(error.message)
    domain = error.domain if isinstance(error.domain, str) else GLib.quark_to_string(error.domain)
    outcome.resource = domain == _RESOURCE_DOMAIN


def _reader(path: str | Path) -> Gst.Element:
    """The container's demuxer, from the name (``x.part.mkv``, ``x.mkv.remux``); else parsebin."""
    ext = Path(str(path).removesuffix(_TEMPORARY_SUFFIX)).suffix.lstrip(".")
    return _make(_DEMUXERS.get(ext, "parsebin"))


def _is_quicktime(path: str | Path) -> bool:
    """A QuickTime (not ISO MP4) file: its ``ftyp`` major brand is ``qt  ``."""
    try:
        with open(path, "rb") as file:
            head = file.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] == b"qt  "


def scan(path: str | Path, timeout: float = 60.0) -> MediaScan:
    """Demux ``path`` to the end and count its video frames (blocking)."""
    pipeline = Gst.Pipeline.new("segment-scan")
    source = _make("filesrc")
    source.set_property("location", str(path))
    parse = _reader(path)
    sink = _make("fakesink")
    sink.set_property("sync", False)
    sink.set_property("async", False)
    for element in (source, parse, sink):
        pipeline.add(element)
    source.link(parse)
    counter = _VideoCounter()
    linked = threading.Event()
    sink_pad = sink.get_static_pad("sink")
    assert sink_pad is not None
    sink_pad.add_probe(Gst.PadProbeType.BUFFER, counter.probe)

    def _pad_added(_element: Gst.Element, pad: Gst.Pad) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name() if caps is not None and caps.get_size() else ""
        if name.startswith("video/") and not linked.is_set():
            linked.set()
            counter.caps = caps.to_string() if caps is not None else None
            pad.link(sink_pad)

    handler = parse.connect("pad-added", _pad_added)
    outcome = _run(pipeline, timeout)
    parse.disconnect(handler)  # its closure holds the pipeline: a cycle through C otherwise
    error = outcome.error
    if not linked.is_set() and error is None:
        error = "no video stream"
    return MediaScan(
        frames=counter.frames,
        duration=counter.duration,
        error=error,
        caps=counter.caps,
        unreadable=outcome.resource and counter.frames == 0,
    )


def remux(source_path: str | Path, target_path: str | Path, fmt: str, timeout: float = 120.0) -> MediaScan:
    """Rewrite ``source_path`` into a finished ``fmt`` file at ``target_path`` (pass-through).

    Returns what was carried over; a truncated tail ends the copy there instead of failing it.
    """
    pipeline = Gst.Pipeline.new("segment-remux")
    source = _make("filesrc")
    source.set_property("location", str(source_path))
    parse = _reader(source_path)
    muxer = _make("qtmux" if fmt == "mp4" and _is_quicktime(source_path) else _MUXERS[fmt])
    sink = _make("filesink")
    sink.set_property("location", str(target_path))
    sink.set_property("async", False)
    for element in (source, parse, muxer, sink):
        pipeline.add(element)
    source.link(parse)
    muxer.link(sink)
    counter = _VideoCounter()
    mux_pad: list[Gst.Pad] = []  # the entry (queue sink) of each track carried, video first
    audio_pad: list[Gst.Pad] = []

    def _through_queue(pad: Gst.Pad, template: str) -> Gst.Pad | None:
        # A queue per track: the demuxer pushes every track from one thread, and the muxer holds
        # one track's buffer until the others have data (a deadlock without a queue between).
        target = muxer.request_pad_simple(template)
        if target is None:
            return None
        queue = _make("queue")
        for limit in ("max-size-buffers", "max-size-bytes", "max-size-time"):
            queue.set_property(limit, 0)
        pipeline.add(queue)
        queue_sink = queue.get_static_pad("sink")
        assert queue_sink is not None
        linked = queue.link_pads("src", muxer, target.get_name()) and (
            Gst.Pad.link_full(pad, queue_sink, Gst.PadLinkCheck.DEFAULT) == Gst.PadLinkReturn.OK
        )
        queue.sync_state_with_parent()
        return queue_sink if linked else None

    def _pad_added(_element: Gst.Element, pad: Gst.Pad) -> None:
        # The demuxer's streaming thread, in this private pipeline's start-up.
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name() if caps is not None and caps.get_size() else ""
        if audio_codec_of(caps) is not None and not audio_pad:
            entry = _through_queue(pad, "audio_%u")
            if entry is None:
                log.warning("remux %s: %s cannot take its %s audio: dropped", source_path, fmt, name)
            else:
                audio_pad.append(entry)
        if not name.startswith("video/") or mux_pad:
            return
        counter.caps = caps.to_string() if caps is not None else None
        pad.add_probe(Gst.PadProbeType.BUFFER, counter.probe)
        entry = _through_queue(pad, "video_%u")
        if entry is None:
            log.warning("remux %s: %s cannot take %s", source_path, fmt, name)
        else:
            mux_pad.append(entry)

    handler = parse.connect("pad-added", _pad_added)

    def _finish_muxer() -> bool:
        ended = [p.send_event(Gst.Event.new_eos()) for p in (*mux_pad, *audio_pad)]
        return bool(mux_pad) and all(ended)

    outcome = _run(pipeline, timeout, on_error=_finish_muxer)
    # The handler's closure holds the pipeline, which holds the demuxer, which holds the handler:
    # a cycle through C that Python's collector cannot see (each remux leaked its pipeline).
    parse.disconnect(handler)
    error = outcome.error
    if not mux_pad:
        error = error or "no video stream"
    return MediaScan(
        frames=counter.frames,
        duration=counter.duration,
        error=error,
        caps=counter.caps,
        unreadable=outcome.resource and counter.frames == 0,
    )
