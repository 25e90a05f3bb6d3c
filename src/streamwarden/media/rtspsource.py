"""RTSP camera ingest as one bin: rtspsrc ! depayloader ! parser, with a fixed ghost pad.

The depayloader and parser can only be chosen once rtspsrc has read the SDP, i.e. in
``pad-added`` on rtspsrc's streaming thread. Changing element state there can deadlock, so
the new pad is blocked with a probe and the linking is done on the engine's loop thread.

Audio (AAC as mpeg4-generic or MP4A-LATM, G.711 as PCMU/PCMA) gets a chain of its own and a
second ghost pad ``audio``, added before data flows. The tracks are fixed (``on_tracks``) at
rtspsrc's ``no-more-pads``, which comes once every stream of the SDP has data, or after
TRACKS_TIMEOUT past the video pad if a stream never sends any; only then are the blocking
probes removed. An audio stream that shows up later, or in a codec we do not carry, is dropped.
Without ``on_tracks`` audio is dropped as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from streamwarden.media.audio import RTP_AUDIO, AudioTrack, OnTracks, call_later
from streamwarden.media.gst import GLib, Gst
from streamwarden.media.rtpstats import RtpStats, read_rtp_stats
from streamwarden.media.weakcb import weak_callback

log = logging.getLogger(__name__)

_DEPAYLOADERS = {"H264": ("rtph264depay", "h264parse", "h264"), "H265": ("rtph265depay", "h265parse", "h265")}
# How long the video waits, held, for the other streams of the SDP (no-more-pads) to show up.
TRACKS_TIMEOUT = 2.0


class RtspSourceBin(Gst.Bin):
    """Pass-through RTSP ingest; parsed H.264/H.265 on ghost pad ``src``, audio on ``audio``."""

    def __init__(
        self,
        location: str,
        *,
        schedule: Callable[[Callable[[], None]], None],
        protocols: str = "tcp",
        user: str | None = None,
        password: str | None = None,
        latency_ms: int = 200,
        timeout_seconds: float = 10.0,
        name: str | None = None,
        on_tracks: OnTracks | None = None,
    ) -> None:
        super().__init__(name=name)
        self._schedule = schedule
        self._on_tracks = on_tracks
        self.codec: str | None = None
        self.audio: AudioTrack | None = None
        self.audio_elements: list[Gst.Element] = []  # depayloader (+ parser): their errors cost audio
        self._lock = threading.Lock()
        self._video_linked = False
        self._audio_claimed = False
        self._tracks_fixed = on_tracks is None
        self._tracks_timer: GLib.Source | None = None
        self._held: list[tuple[Gst.Pad, int]] = []  # blocked pads, released once the tracks are fixed
        self.src_pad = Gst.GhostPad.new_no_target("src", Gst.PadDirection.SRC)
        self.add_pad(self.src_pad)

        src = Gst.ElementFactory.make("rtspsrc", None)
        if src is None:
            raise RuntimeError("GStreamer element rtspsrc is missing (gstreamer1.0-plugins-good)")
        self.rtspsrc = src
        src.set_property("location", location)
        src.set_property("latency", latency_ms)
        Gst.util_set_object_arg(src, "protocols", protocols)
        # tcp-timeout bounds each request/response (and the teardown of a frozen server);
        # the UDP "no data" timeout before trying TCP stays rtspsrc's default (5 s).
        src.set_property("tcp-timeout", int(timeout_seconds * 1_000_000))
        src.set_property("teardown-timeout", 100 * Gst.MSECOND)
        if user:
            src.set_property("user-id", user)
        if password:
            src.set_property("user-pw", password)
        self.add(src)
        src.connect("pad-added", weak_callback(self._on_pad_added))
        if on_tracks is not None:
            src.connect("no-more-pads", weak_callback(self._on_no_more_pads))

    def do_change_state(self, transition: Gst.StateChange) -> Gst.StateChangeReturn:
        if transition == Gst.StateChange.PAUSED_TO_READY and self._tracks_timer is not None:
            self._tracks_timer.destroy()
            self._tracks_timer = None
        return Gst.Bin.do_change_state(self, transition)

    def _where(self) -> str:
        """``<stream>-<attempt>/source`` for log lines: the bin itself is just ``source``."""
        parent = self.get_parent()
        return f"{parent.get_name()}/{self.get_name()}" if parent is not None else str(self.get_name())

    def transport_stats(self) -> RtpStats | None:
        """Cumulative RTP/RTCP counters (loss, jitter, ...); None until SETUP. Any thread."""
        return read_rtp_stats(self.rtspsrc)

    def _on_pad_added(self, _src: Gst.Element, pad: Gst.Pad) -> None:
        # Streaming thread: classify, block, and hand the work to the loop.
        caps = pad.get_current_caps() or pad.query_caps(None)
        structure = caps.get_structure(0) if caps is not None and caps.get_size() else None
        media = structure.get_string("media") if structure is not None else None
        encoding = (structure.get_string("encoding-name") or "").upper() if structure is not None else ""
        if media == "audio" and self._claim_audio(encoding):
            probe_id = pad.add_probe(Gst.PadProbeType.BLOCK_DOWNSTREAM, _hold)
            self._schedule(lambda: self._link_audio(pad, encoding, probe_id))
            return
        if media != "video" or self._video_linked:
            # Extra streams, and audio we do not carry (or that came too late), are dropped here.
            if media == "audio" and self._on_tracks is not None:
                log.info("[%s] audio stream %s not carried: dropped", self._where(), encoding or "?")
            pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, _drop)
            return
        if encoding not in _DEPAYLOADERS:
            self._post_codec_error(f"unsupported RTSP video encoding {encoding or '(none)'}")
            pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, _drop)
            return
        self._video_linked = True
        probe_id = pad.add_probe(Gst.PadProbeType.BLOCK_DOWNSTREAM, _hold)
        self._schedule(lambda: self._link_video(pad, encoding, probe_id))

    def _claim_audio(self, encoding: str) -> bool:
        """The first audio stream in a codec we carry, while the tracks are still open."""
        with self._lock:
            if (
                self._on_tracks is None
                or self._audio_claimed
                or self._tracks_fixed
                or encoding not in RTP_AUDIO
            ):
                return False
            self._audio_claimed = True
            return True

    def _on_no_more_pads(self, _src: Gst.Element) -> None:
        # Streaming thread: every stream of the SDP has its pad (scheduled after their links).
        self._schedule(self._fix_tracks)

    def _link_video(self, pad: Gst.Pad, encoding: str, probe_id: int) -> None:
        if self.get_parent() is None:
            return  # torn down meanwhile
        depay_name, parser_name, codec = _DEPAYLOADERS[encoding]
        depay = Gst.ElementFactory.make(depay_name, None)
        parser = Gst.ElementFactory.make(parser_name, None)
        if depay is None or parser is None:
            self._post_codec_error(f"missing element {depay_name} or {parser_name}")
            return
        parser.set_property("config-interval", -1)
        self.add(depay)
        self.add(parser)
        depay.link(parser)
        self.src_pad.set_target(parser.get_static_pad("src"))
        parser.sync_state_with_parent()
        depay.sync_state_with_parent()
        depay_sink = depay.get_static_pad("sink")
        result = _link(pad, depay_sink)
        if result != Gst.PadLinkReturn.OK:
            self._post_codec_error(f"cannot link RTSP pad: {result.value_nick}")
        self.codec = codec
        log.debug("[%s] linked %s video", self._where(), codec)
        self._release_when_fixed(pad, probe_id)

    def _link_audio(self, pad: Gst.Pad, encoding: str, probe_id: int) -> None:
        """Loop thread: depayloader (+ parser) and the ``audio`` ghost pad; held until fixed."""
        if self.get_parent() is None:
            return
        if self._tracks_fixed:  # the timeout fixed the tracks first: too late for the muxers
            log.warning("[%s] audio stream arrived after the tracks were fixed: dropped", self._where())
            pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, _drop)
            pad.remove_probe(probe_id)
            return
        depay_name, parser_name, codec = RTP_AUDIO[encoding]
        factories = [depay_name] if parser_name is None else [depay_name, parser_name]
        elements = [Gst.ElementFactory.make(factory, None) for factory in factories]
        chain = [e for e in elements if e is not None]
        if len(chain) != len(factories):
            log.warning("[%s] missing %s: audio dropped", self._where(), " or ".join(factories))
            pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, _drop)
            self._release_when_fixed(pad, probe_id)
            return
        for element in chain:
            self.add(element)
        if len(chain) == 2:
            chain[0].link(chain[1])
        last_src = chain[-1].get_static_pad("src")
        assert last_src is not None
        ghost = Gst.GhostPad.new("audio", last_src)
        ghost.set_active(True)
        self.add_pad(ghost)
        for element in reversed(chain):
            element.sync_state_with_parent()
        if _link(pad, chain[0].get_static_pad("sink")) != Gst.PadLinkReturn.OK:
            log.warning("[%s] cannot link the %s audio stream: dropped", self._where(), encoding)
            pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, _drop)
        else:
            self.audio_elements = chain
            self.audio = AudioTrack(codec)
            log.debug("[%s] linked %s audio", self._where(), codec)
        self._release_when_fixed(pad, probe_id)

    def _release_when_fixed(self, pad: Gst.Pad, probe_id: int) -> None:
        """Loop thread: let the pad go now if the tracks are fixed, else once they are."""
        if self._tracks_fixed:
            pad.remove_probe(probe_id)
            return
        self._held.append((pad, probe_id))
        if self._tracks_timer is None:
            self._tracks_timer = call_later(TRACKS_TIMEOUT, weak_callback(self._fix_tracks), self._where())

    def _fix_tracks(self) -> None:
        """Loop thread, once: tell the owner which audio goes along, then release every pad."""
        with self._lock:
            if self._tracks_fixed or self.get_parent() is None:
                return
            self._tracks_fixed = True
        if self._tracks_timer is not None:
            self._tracks_timer.destroy()
            self._tracks_timer = None
        if self._on_tracks is not None:
            try:
                self._on_tracks(self.audio)
            except Exception:
                log.exception("[%s] tracks callback failed", self._where())
        held, self._held = self._held, []
        for pad, probe_id in held:
            pad.remove_probe(probe_id)

    def _post_codec_error(self, text: str) -> None:
        error = GLib.Error.new_literal(Gst.StreamError.quark(), text, int(Gst.StreamError.CODEC_NOT_FOUND))
        self.post_message(Gst.Message.new_error(self, error, text))


def _drop(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    return Gst.PadProbeReturn.DROP


def _hold(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    return Gst.PadProbeReturn.OK  # a blocking probe: the pad waits until it is removed


def _link(pad: Gst.Pad, sink: Gst.Pad | None) -> Gst.PadLinkReturn:
    """Pad.link without PyGObject's override (which raises instead of returning the result)."""
    if sink is None:
        return Gst.PadLinkReturn.REFUSED
    return Gst.Pad.link_full(pad, sink, Gst.PadLinkCheck.DEFAULT)
