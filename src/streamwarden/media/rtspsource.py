"""RTSP camera ingest as one bin: rtspsrc ! depayloader ! parser, with a fixed ghost pad.

The depayloader and parser can only be chosen once rtspsrc has read the SDP, i.e. in
``pad-added`` on rtspsrc's streaming thread. Changing element state there can deadlock, so
the new pad is blocked with a probe and the linking is done on the engine's loop thread;
the probe is removed once the chain is in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from streamwarden.media.audio import AudioTrack, OnTracks
from streamwarden.media.gst import GLib, Gst
from streamwarden.media.weakcb import weak_callback

log = logging.getLogger(__name__)

_DEPAYLOADERS = {"H264": ("rtph264depay", "h264parse", "h264"), "H265": ("rtph265depay", "h265parse", "h265")}


class RtspSourceBin(Gst.Bin):
    """Pass-through RTSP ingest; emits parsed H.264/H.265 on the ghost pad ``src``."""

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
        self.audio_elements: list[Gst.Element] = []
        self._video_linked = False
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

    def _on_pad_added(self, _src: Gst.Element, pad: Gst.Pad) -> None:
        # Streaming thread: classify, block, and hand the work to the loop.
        caps = pad.get_current_caps() or pad.query_caps(None)
        structure = caps.get_structure(0) if caps is not None and caps.get_size() else None
        media = structure.get_string("media") if structure is not None else None
        encoding = (structure.get_string("encoding-name") or "").upper() if structure is not None else ""
        if media != "video" or self._video_linked:
            # Audio and extra streams are dropped here until they get sinks of their own.
            pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, _drop)
            return
        if encoding not in _DEPAYLOADERS:
            self._post_codec_error(f"unsupported RTSP video encoding {encoding or '(none)'}")
            pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, _drop)
            return
        self._video_linked = True
        probe_id = pad.add_probe(Gst.PadProbeType.BLOCK_DOWNSTREAM, lambda *_: Gst.PadProbeReturn.OK)
        self._schedule(lambda: self._link_video(pad, encoding, probe_id))

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
        result = pad.link(depay_sink) if depay_sink is not None else Gst.PadLinkReturn.REFUSED
        if result != Gst.PadLinkReturn.OK:
            self._post_codec_error(f"cannot link RTSP pad: {result.value_nick}")
        self.codec = codec
        if self._on_tracks is not None:
            self._on_tracks(None)
        pad.remove_probe(probe_id)
        log.debug("[%s] linked %s video", self.get_name(), codec)

    def _post_codec_error(self, text: str) -> None:
        error = GLib.Error.new_literal(Gst.StreamError.quark(), text, int(Gst.StreamError.CODEC_NOT_FOUND))
        self.post_message(Gst.Message.new_error(self, error, text))


def _drop(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    return Gst.PadProbeReturn.DROP
