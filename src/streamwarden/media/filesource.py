"""Play a media file (or an HTTP stream) forever as a live-looking, encoded pass-through source.

Inside the bin: ``reader ! typefind ! demuxer`` → ``h264parse``/``h265parse`` → ghost pad ``src``,
and, when the owner takes audio (``on_tracks``), AAC → ``aacparse`` (G.711 → ``identity``) → ghost
pad ``audio``. At each end of file the reader, typefind and demuxer are torn down and rebuilt,
while the parsers and the ghost pads stay, so downstream sees one endless stream. This is the
technique measured in the shared notes ("Looping a file as a live stream"): segment seeks repeat a
timestamp at every wrap and keep the old file open, whereas a rebuild is seamless and notices a
deleted, truncated or replaced file at the next reopen (the reader/demuxer then posts the ERROR
itself).

How the wrap stays seamless: a probe on every demuxer pad drops EOS and the repeated
STREAM_START, and records the largest running-time end of what it forwarded. Each new demuxer
pad is shifted with ``Gst.Pad.set_offset`` by ONE offset shared by all its pads (the running
time where the previous loop ended), so running time keeps increasing while raw PTS restarts.

Tracks (see ``audio.py``): on the first pass every demuxer pad is held at its first buffer until
the demuxer's ``no-more-pads`` (or a 1 s timeout); the bin then adds the ``audio`` pad if the file
has audio we carry, calls ``on_tracks`` and only then releases the pads. Without ``on_tracks`` the
audio is dropped inside the bin, as a video-only consumer needs.

Threading: pad probes, ``pad-added`` and ``have-type`` run on streaming threads, where changing
element state can deadlock; they only record and call ``schedule()``. Every add/remove/link of
an element and every state change runs in a callable on the engine's loop thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from streamwarden.media.audio import AudioTrack, OnTracks, audio_codec_of, call_later
from streamwarden.media.gst import GLib, Gst
from streamwarden.media.weakcb import weak_callback

__all__ = ["LoopingFileSource"]

_logger = logging.getLogger(__name__)

Schedule = Callable[[Callable[[], None]], None]

# Container caps (as typefind names them) → demuxer.
_DEMUXERS = {
    "video/quicktime": "qtdemux",
    "video/x-matroska": "matroskademux",
    "video/webm": "matroskademux",
    "video/mpegts": "tsdemux",
}
# Video caps → (codec name exposed as ``codec``, parser factory).
_PARSERS = {"video/x-h264": ("h264", "h264parse"), "video/x-h265": ("h265", "h265parse")}

# How long the first pass waits for the demuxer's no-more-pads before fixing the tracks anyway.
TRACKS_TIMEOUT = 1.0

_NONE = Gst.CLOCK_TIME_NONE
_BLOCK_DATA = Gst.PadProbeType.BLOCK | Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST
_GONE = Gst.PadProbeReturn.DROP  # a probe of a pass (or a bin) already thrown away


class _Role(Enum):
    PENDING = "pending"  # first buffer not yet handled on the loop thread
    VIDEO = "video"  # linked to the parser; its data counts for the next offset
    AUDIO = "audio"  # linked to the audio parser; its data counts for the next offset too
    DROPPED = "dropped"  # extra tracks, subtitles, audio nobody takes: dropped inside the bin


@dataclass(eq=False)
class _DemuxPad:
    """Per demuxer pad bookkeeping, written by that pad's streaming thread."""

    pad: Gst.Pad
    role: _Role = _Role.PENDING
    attach_scheduled: bool = False
    held_probe: int = 0  # first-buffer probe still blocking while the tracks are not fixed
    segment: Gst.Segment | None = None
    eos: bool = False
    last_ts: int = _NONE
    # Smallest positive step between timestamps: stands in for buffer durations that the
    # demuxer leaves unset (tsdemux sets none), so the next loop starts one frame later.
    frame_step: int = _NONE


@dataclass(eq=False)
class _Loop:
    """One pass over the file: the elements rebuilt at every wrap and what they produced."""

    index: int
    offset: int  # running-time shift applied to every pad of this pass
    reader: Gst.Element
    typefind: Gst.Element
    demuxer: Gst.Element | None = None
    demuxer_scheduled: bool = False
    no_more_pads: bool = False
    pads: list[_DemuxPad] = field(default_factory=list)
    max_end: int = 0  # largest running-time end forwarded, offset included
    ended: bool = False  # every pad hit EOS and the wrap was scheduled
    wrap_started: float | None = None  # monotonic time the previous pass ended (rebuild timing)


class LoopingFileSource(Gst.Bin):
    """A file or HTTP URL played forever, pass-through, on one always-present ghost pad ``src``.

    ``schedule`` must run a callable later on the engine's GLib loop thread (thread-safe).
    With ``loop=False`` the end of the stream is let through as EOS (an HTTP live stream that
    ends has disconnected), so the engine treats it as a failure. ``on_tracks`` (loop thread)
    hears once which audio track the file carries, before any data leaves the bin.

    Single use: once set back to READY/NULL, build a new one rather than restarting it.
    """

    __gtype_name__ = "StreamwardenLoopingFileSource"

    def __init__(
        self,
        location: str,
        *,
        schedule: Schedule,
        name: str | None = None,
        loop: bool = True,
        on_tracks: OnTracks | None = None,
    ) -> None:
        super().__init__(name=name)
        self.loops_completed: int = 0
        self.codec: str | None = None
        self.audio: AudioTrack | None = None
        self.audio_elements: list[Gst.Element] = []  # the audio parser chain (its errors cost audio only)
        self._on_tracks = on_tracks
        self._tracks_fixed = on_tracks is None
        self._tracks_timer: GLib.Source | None = None
        self._audio_sink: Gst.Pad | None = None  # where each pass's audio pad links
        self._location = location
        self._schedule = schedule
        self._loop_forever = loop
        self._lock = threading.Lock()
        self._stopping = False
        self._parser: Gst.Element | None = None
        self._src_pad = Gst.GhostPad.new_no_target("src", Gst.PadDirection.SRC)
        self.add_pad(self._src_pad)
        first = self._build_loop(index=0, offset=0)
        if first is None:
            raise RuntimeError("cannot build the file reader: GStreamer plugins are missing")
        self._current: _Loop | None = first

    # -- logging and errors ------------------------------------------------------------------
    def _where(self) -> str:
        # The bin's own name, prefixed with its pipeline's when it has one, so that every line
        # says which stream it is about even if the bin itself is named generically.
        name = self.get_name()
        parent = self.get_parent()
        return f"{parent.get_name()}/{name}" if parent is not None else str(name)

    def _log(self, level: int, msg: str, *args: object) -> None:
        _logger.log(level, "[%s] " + msg, self._where(), *args, extra={"bin": self.get_name()})

    def _post_error(self, code: Gst.StreamError | Gst.CoreError, text: str, debug: str) -> None:
        """Post an element ERROR from the bin so the engine's classifier sees domain and code."""
        self._log(logging.ERROR, "%s (%s)", text, debug)
        domain = Gst.CoreError.quark() if isinstance(code, Gst.CoreError) else Gst.StreamError.quark()
        error = GLib.Error.new_literal(domain, text, int(code))
        self.post_message(Gst.Message.new_error(self, error, debug))

    def _make(self, factory: str) -> Gst.Element | None:
        element = Gst.ElementFactory.make(factory, None)
        if element is None:
            self._post_error(
                Gst.CoreError.MISSING_PLUGIN, f"GStreamer element {factory} is missing", self._location
            )
        return element

    # -- state --------------------------------------------------------------------------------
    def do_change_state(self, transition: Gst.StateChange) -> Gst.StateChangeReturn:
        # Callables already queued on the loop must not rebuild a bin that is being stopped.
        if transition == Gst.StateChange.PAUSED_TO_READY:
            self._stopping = True
            if self._tracks_timer is not None:
                self._tracks_timer.destroy()
                self._tracks_timer = None
        return Gst.Bin.do_change_state(self, transition)

    def _is_current(self, loop: _Loop) -> bool:
        return loop is self._current and not self._stopping

    # -- one pass: reader ! typefind → demuxer -------------------------------------------------
    def _build_loop(self, index: int, offset: int) -> _Loop | None:
        """Create and link reader + typefind (not yet started); the demuxer follows the type."""
        is_url = self._location.startswith(("http://", "https://"))
        reader = self._make("curlhttpsrc" if is_url else "filesrc")
        typefind = self._make("typefind")
        if reader is None or typefind is None:
            return None
        location = self._location
        if location.startswith("file://"):
            location = Gst.uri_get_location(location) or location
        reader.set_property("location", location)
        self.add(reader)
        self.add(typefind)
        reader.link(typefind)
        loop = _Loop(index=index, offset=offset, reader=reader, typefind=typefind)
        tf_src = typefind.get_static_pad("src")
        assert tf_src is not None
        # typefind pushes its first buffer right after have-type, while the demuxer can only be
        # added on the loop thread: hold that buffer (events pass and stay sticky) until then.
        tf_src.add_probe(_BLOCK_DATA, weak_callback(self._on_typefind_data, loop, dead=_GONE))
        return loop

    def _on_typefind_data(self, pad: Gst.Pad, info: Gst.PadProbeInfo, loop: _Loop) -> Gst.PadProbeReturn:
        # Streaming thread, or the loop thread itself while a state change drains data.
        if not self._is_current(loop):
            return Gst.PadProbeReturn.DROP  # never block a teardown: nobody would release it
        if not loop.demuxer_scheduled:
            loop.demuxer_scheduled = True
            caps = pad.get_current_caps()
            probe_id = info.id
            self._schedule(lambda: self._add_demuxer(loop, caps, probe_id))
        return Gst.PadProbeReturn.OK  # stay blocked until _add_demuxer removes the probe

    def _add_demuxer(self, loop: _Loop, caps: Gst.Caps | None, probe_id: int) -> None:
        # Loop thread.
        if not self._is_current(loop):
            return  # being torn down: deactivating the pads releases the blocked thread
        structure = caps.get_structure(0) if caps is not None and caps.get_size() else None
        container = structure.get_name() if structure is not None else ""
        factory = _DEMUXERS.get(container)
        if factory is None:
            self._post_error(
                Gst.StreamError.CODEC_NOT_FOUND,
                f"unsupported container {caps.to_string() if caps is not None else '(unknown)'}",
                f"{self._location}: supported are MP4/MOV, Matroska/WebM and MPEG-TS",
            )
            return
        demuxer = self._make(factory)
        if demuxer is None:
            return
        demuxer.connect("pad-added", weak_callback(self._on_pad_added, loop))
        demuxer.connect("no-more-pads", weak_callback(self._on_no_more_pads, loop))
        self.add(demuxer)
        loop.demuxer = demuxer
        tf_sink = loop.typefind.get_static_pad("sink")
        tf_src = loop.typefind.get_static_pad("src")
        assert tf_sink is not None and tf_src is not None
        if not loop.typefind.link(demuxer):
            self._post_error(Gst.StreamError.DEMUX, f"cannot link typefind to {factory}", self._location)
            return
        if tf_sink.mode == Gst.PadMode.PULL:
            # A file: the demuxer will pull from typefind, and activating it in pull mode stops
            # typefind's own task, which waits for the thread we hold blocked: release it first.
            # Its held buffer then meets the not yet active demuxer pad, gets FLUSHING and
            # typefind pauses quietly; the demuxer reads the file from the start itself.
            tf_src.remove_probe(probe_id)
            demuxer.sync_state_with_parent()
        else:
            # HTTP (push mode): the held buffer is the head of the stream; start the demuxer
            # first so that it receives it.
            demuxer.sync_state_with_parent()
            tf_src.remove_probe(probe_id)

    # -- demuxer pads --------------------------------------------------------------------------
    def _on_pad_added(self, _demuxer: Gst.Element, pad: Gst.Pad, loop: _Loop) -> None:
        # Streaming thread: only probes here. Caps may still be unknown (seen None in
        # pad-added), so the pad is classified at its first buffer, which follows the CAPS event.
        entry = _DemuxPad(pad)
        with self._lock:
            loop.pads.append(entry)
        pad.add_probe(
            Gst.PadProbeType.DATA_DOWNSTREAM, weak_callback(self._on_demux_data, loop, entry, dead=_GONE)
        )
        pad.add_probe(_BLOCK_DATA, weak_callback(self._on_first_buffer, loop, entry, dead=_GONE))

    def _on_first_buffer(
        self, _pad: Gst.Pad, info: Gst.PadProbeInfo, loop: _Loop, entry: _DemuxPad
    ) -> Gst.PadProbeReturn:
        # Streaming thread: hold the pad (an unlinked pad would fail with not-linked) until
        # the loop thread has linked or classified it. But never block once the bin is being
        # stopped: tsdemux pushes its pending data from inside its state change, i.e. on the
        # loop thread, which would then wait for itself.
        if not self._is_current(loop):
            return Gst.PadProbeReturn.DROP
        if not entry.attach_scheduled:
            entry.attach_scheduled = True
            probe_id = info.id
            self._schedule(lambda: self._attach_pad(loop, entry, probe_id))
        return Gst.PadProbeReturn.OK

    def _on_no_more_pads(self, _demuxer: Gst.Element, loop: _Loop) -> None:
        # Streaming thread: every pad of this pass exists now, with its caps.
        loop.no_more_pads = True
        self._schedule(lambda: self._fix_tracks(loop))

    def _attach_pad(self, loop: _Loop, entry: _DemuxPad, probe_id: int) -> None:
        # Loop thread.
        if not self._is_current(loop):
            return
        if not self._tracks_fixed:
            # The first pass: the owner must hear of every track before any data leaves the bin.
            entry.held_probe = probe_id
            if self._tracks_timer is None:
                self._tracks_timer = call_later(
                    TRACKS_TIMEOUT, weak_callback(self._fix_tracks, loop), self._where()
                )
            return
        if self._link_pad(loop, entry):
            entry.pad.remove_probe(probe_id)

    def _fix_tracks(self, loop: _Loop) -> None:
        """Loop thread, once: choose the audio track, tell the owner, then release the held pads."""
        if self._tracks_fixed or not self._is_current(loop):
            return
        self._tracks_fixed = True
        if self._tracks_timer is not None:
            self._tracks_timer.destroy()
            self._tracks_timer = None
        if not loop.no_more_pads:
            self._log(logging.DEBUG, "no no-more-pads within %.1f s: tracks fixed as seen", TRACKS_TIMEOUT)
        with self._lock:
            pads = list(loop.pads)
        codecs = [audio_codec_of(entry.pad.get_current_caps()) for entry in pads]
        codec = next((c for c in codecs if c is not None), None)
        if codec is not None:
            self._add_audio(codec)
        else:
            self._log(logging.DEBUG, "no audio track we carry in %s", self._location)
        if self._on_tracks is not None:
            try:
                self._on_tracks(self.audio)
            except Exception:
                _logger.exception("[%s] tracks callback failed", self._where())
        for entry in pads:
            if entry.held_probe and self._link_pad(loop, entry):
                entry.pad.remove_probe(entry.held_probe)
                entry.held_probe = 0

    def _add_audio(self, codec: str) -> None:
        """Loop thread: the audio parser chain and the ``audio`` ghost pad, kept for the whole run."""
        # AAC leaves as raw (codec_data in the caps), what MP4, Matroska and RTP all take; aacparse
        # converts ADTS (MPEG-TS) to it. G.711 needs no parser: identity is only a fixed anchor.
        factories = ["aacparse", "capsfilter"] if codec == "aac" else ["identity"]
        elements: list[Gst.Element] = []
        for factory in factories:
            element = Gst.ElementFactory.make(factory, None)
            if element is None:
                self._log(logging.WARNING, "GStreamer element %s is missing: audio dropped", factory)
                return
            elements.append(element)
        if codec == "aac":
            elements[1].set_property("caps", Gst.Caps.from_string("audio/mpeg, stream-format=(string)raw"))
        for element in elements:
            self.add(element)
        for upstream, downstream in itertools.pairwise(elements):
            upstream.link(downstream)
        last_src = elements[-1].get_static_pad("src")
        first_sink = elements[0].get_static_pad("sink")
        assert last_src is not None and first_sink is not None
        ghost = Gst.GhostPad.new("audio", last_src)
        ghost.set_active(True)
        self.add_pad(ghost)
        for element in reversed(elements):
            element.sync_state_with_parent()
        self.audio_elements = elements
        self._audio_sink = first_sink
        self.audio = AudioTrack(codec)
        self._log(logging.INFO, "carrying %s audio from %s", codec, self._location)

    def _link_pad(self, loop: _Loop, entry: _DemuxPad) -> bool:
        """Loop thread: link (or drop) one demuxer pad; False leaves it blocked (an error was posted)."""
        pad = entry.pad
        caps = pad.get_current_caps()
        structure = caps.get_structure(0) if caps is not None and caps.get_size() else None
        kind = structure.get_name() if structure is not None else ""
        caps_text = caps.to_string() if caps is not None else "(no caps)"
        has_video = any(p.role is _Role.VIDEO for p in loop.pads)
        has_audio = any(p.role is _Role.AUDIO for p in loop.pads)
        audio_codec = audio_codec_of(caps)
        # ONE offset for every pad of this pass, so audio and video stay in sync.
        pad.set_offset(loop.offset)
        if kind in _PARSERS and not has_video:
            codec, parser_factory = _PARSERS[kind]
            parser = self._ensure_parser(codec, parser_factory)
            if parser is None:
                return False
            if codec != self.codec:
                self._post_error(
                    Gst.StreamError.FORMAT,
                    f"video codec changed from {self.codec} to {codec}",
                    f"{self._location} (pass {loop.index}): the parser cannot change codec; caps {caps_text}",
                )
                return False  # stays blocked; the engine rebuilds the pipeline
            parser_sink = parser.get_static_pad("sink")
            assert parser_sink is not None
            result = pad.link(parser_sink)
            if result != Gst.PadLinkReturn.OK:
                self._post_error(
                    Gst.StreamError.FORMAT,
                    f"cannot link demuxer pad {pad.get_name()} to {parser_factory}: {result.value_nick}",
                    caps_text,
                )
                return False
            entry.role = _Role.VIDEO
            self._log_wrap_done(loop)
        elif kind.startswith("video/") and not has_video:
            self._post_error(
                Gst.StreamError.CODEC_NOT_FOUND,
                f"unsupported video codec {kind}",
                f"{self._location}: only H.264 and H.265 pass through; caps {caps_text}",
            )
            return False
        elif audio_codec is not None and self._audio_sink is not None and not has_audio:
            if self.audio is not None and audio_codec != self.audio.codec:
                # The owner's muxers and payloaders expect the first codec: this pass goes without
                # audio (the pipeline's audio watchdog ends the audio track if it stays away).
                self._log(logging.WARNING, "pass %d: audio codec now %s: dropped", loop.index, audio_codec)
                entry.role = _Role.DROPPED
            elif Gst.Pad.link_full(pad, self._audio_sink, Gst.PadLinkCheck.DEFAULT) == Gst.PadLinkReturn.OK:
                entry.role = _Role.AUDIO
            else:
                self._log(logging.WARNING, "pass %d: cannot link audio %s: dropped", loop.index, caps_text)
                entry.role = _Role.DROPPED
        else:
            entry.role = _Role.DROPPED
            self._log(logging.DEBUG, "pass %d: dropping pad %s (%s)", loop.index, pad.get_name(), kind or "?")
        return True

    def _ensure_parser(self, codec: str, factory: str) -> Gst.Element | None:
        """Create the parser on the first video pad; it then stays for the whole run."""
        if self._parser is not None:
            return self._parser
        parser = self._make(factory)
        if parser is None:
            return None
        parser.set_property("config-interval", -1)
        self.add(parser)
        parser_src = parser.get_static_pad("src")
        assert parser_src is not None
        self._src_pad.set_target(parser_src)
        parser.sync_state_with_parent()
        self._parser = parser
        self.codec = codec
        self._log(logging.INFO, "playing %s video from %s", codec, self._location)
        return parser

    def _log_wrap_done(self, loop: _Loop) -> None:
        if loop.wrap_started is not None:
            self._log(
                logging.DEBUG,
                "pass %d started: rebuilt in %.1f ms, offset %.3f s",
                loop.index,
                (time.monotonic() - loop.wrap_started) * 1000.0,
                loop.offset / Gst.SECOND,
            )

    # -- the loop probe ------------------------------------------------------------------------
    def _on_demux_data(
        self, _pad: Gst.Pad, info: Gst.PadProbeInfo, loop: _Loop, entry: _DemuxPad
    ) -> Gst.PadProbeReturn:
        # Streaming thread: keep this cheap, it runs for every buffer.
        probe_type = info.type
        if probe_type & Gst.PadProbeType.BUFFER:
            if entry.role is _Role.DROPPED:
                return Gst.PadProbeReturn.DROP
            buffer = info.get_buffer()
            if buffer is not None:
                self._track(loop, entry, buffer)
            return Gst.PadProbeReturn.OK
        if probe_type & Gst.PadProbeType.BUFFER_LIST:
            if entry.role is _Role.DROPPED:
                return Gst.PadProbeReturn.DROP
            buffers = info.get_buffer_list()
            if buffers is not None:
                for i in range(buffers.length()):
                    self._track(loop, entry, buffers.get(i))
            return Gst.PadProbeReturn.OK
        event = info.get_event()
        if event is None:
            return Gst.PadProbeReturn.OK
        event_type = event.type
        if event_type == Gst.EventType.SEGMENT:
            # Seen again with the pad offset applied once the pad is linked; the last one counts.
            entry.segment = event.parse_segment().copy()
        elif event_type == Gst.EventType.STREAM_START and loop.index > 0:
            return Gst.PadProbeReturn.DROP  # downstream must see one stream, not one per pass
        elif event_type == Gst.EventType.EOS:
            self._on_pad_eos(loop, entry)
            if self._loop_forever:
                return Gst.PadProbeReturn.DROP
        return Gst.PadProbeReturn.OK

    def _track(self, loop: _Loop, entry: _DemuxPad, buffer: Gst.Buffer) -> None:
        """Record the running-time end of a forwarded buffer (pts + duration, via the segment)."""
        ts = buffer.pts if buffer.pts != _NONE else buffer.dts
        segment = entry.segment
        if ts == _NONE or segment is None or segment.format != Gst.Format.TIME:
            return
        last = entry.last_ts
        if last != _NONE and ts > last and (entry.frame_step == _NONE or ts - last < entry.frame_step):
            entry.frame_step = ts - last
        entry.last_ts = ts
        duration = buffer.duration
        if duration == _NONE:
            duration = entry.frame_step if entry.frame_step != _NONE else 0
        sign, end = segment.to_running_time_full(Gst.Format.TIME, ts + duration)
        if sign > 0 and end > loop.max_end:
            with self._lock:
                loop.max_end = max(loop.max_end, end)

    def _on_pad_eos(self, loop: _Loop, entry: _DemuxPad) -> None:
        # Streaming thread.
        with self._lock:
            entry.eos = True
            if loop.ended or not all(p.eos for p in loop.pads):
                return
            loop.ended = True
        if self._loop_forever:
            ended_at = time.monotonic()
            self._schedule(lambda: self._wrap(loop, ended_at))

    # -- the wrap ------------------------------------------------------------------------------
    def _wrap(self, old: _Loop, ended_at: float) -> None:
        """Loop thread: tear down reader + typefind + demuxer of the pass that ended, build anew."""
        if not self._is_current(old):
            return
        if not any(p.role is _Role.VIDEO for p in old.pads):
            # Rebuilding would spin on a file that has nothing to show.
            self._post_error(
                Gst.StreamError.DEMUX,
                "no H.264/H.265 video frames in the file",
                f"{self._location} (pass {old.index})",
            )
            return
        with self._lock:
            next_offset = max(old.offset, old.max_end)
        self._current = None  # retire ``old`` first: its probes must not block while it stops
        for element in (old.demuxer, old.typefind, old.reader):
            if element is not None:
                element.set_state(Gst.State.NULL)
        for element in (old.demuxer, old.typefind, old.reader):
            if element is not None:
                self.remove(element)
        self.loops_completed += 1
        new = self._build_loop(old.index + 1, next_offset)
        if new is None:
            return
        new.wrap_started = ended_at
        self._current = new
        new.typefind.sync_state_with_parent()
        if not new.reader.sync_state_with_parent():
            # The reader has posted its own ERROR (missing file, directory, no permission...).
            self._log(logging.WARNING, "cannot reopen %s for pass %d", self._location, new.index)
