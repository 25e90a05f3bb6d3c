"""Audio carried through untouched next to the video: codecs, tracks and how sources announce them.

Video stays the primary track (health, stall detection, segment cuts, client priming); audio
rides along, parsed but never transcoded, and an audio problem may cost the audio, never the
stream. The constraint that shapes everything: a muxer cannot gain a pad once data has started,
so the set of tracks must be fixed before any sink sees a buffer. Each source bin therefore
*announces* its tracks exactly once, on the engine loop thread, while it still holds all of its
data (demuxer: after ``no-more-pads``; rtspsrc: after ``no-more-pads`` or a short timeout); the
pipeline builds its audio chain and attaches its branches in that call, then the bin lets data go.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from streamwarden.media.gst import GLib, Gst

__all__ = [
    "RTP_AUDIO",
    "AudioTap",
    "AudioTrack",
    "OnTracks",
    "accepts",
    "audio_codec_of",
    "call_later",
]

log = logging.getLogger(__name__)

# Codec name → the caps a muxer or payloader is offered (what the source bins output).
_CODEC_CAPS = {
    "aac": "audio/mpeg, mpegversion=(int)4, stream-format=(string)raw",
    "pcmu": "audio/x-mulaw",
    "pcma": "audio/x-alaw",
}
# RTP encoding-name → (depayloader, parser or None, codec). G.711 needs no parser: every RTP
# packet is a self-contained run of samples with a timestamp.
RTP_AUDIO: dict[str, tuple[str, str | None, str]] = {
    "MPEG4-GENERIC": ("rtpmp4gdepay", "aacparse", "aac"),
    "MP4A-LATM": ("rtpmp4adepay", "aacparse", "aac"),
    "PCMU": ("rtppcmudepay", None, "pcmu"),
    "PCMA": ("rtppcmadepay", None, "pcma"),
}


@dataclass(frozen=True)
class AudioTrack:
    """The one audio track a source carries: its codec and the caps it leaves the source with."""

    codec: str  # "aac", "pcmu" or "pcma"

    @property
    def caps(self) -> Gst.Caps:
        caps = Gst.Caps.from_string(_CODEC_CAPS[self.codec])
        assert caps is not None
        return caps


@dataclass(frozen=True)
class AudioTap:
    """Where a branch takes the audio from: the attempt's audio tee (``allow-not-linked``)."""

    track: AudioTrack
    tee: Gst.Element


# A source bin calls this once, on the loop thread, before it lets any data out.
OnTracks = Callable[[AudioTrack | None], None]


def audio_codec_of(caps: Gst.Caps | None) -> str | None:
    """``aac``/``pcmu``/``pcma`` for encoded audio caps we carry; None for anything else."""
    if caps is None or caps.get_size() == 0:
        return None
    structure = caps.get_structure(0)
    if structure is None:
        return None
    name = structure.get_name()
    if name == "audio/mpeg":
        ok, version = structure.get_int("mpegversion")
        return "aac" if ok and version in (2, 4) else None
    if name == "audio/x-mulaw":
        return "pcmu"
    if name == "audio/x-alaw":
        return "pcma"
    return None


def accepts(factory: str, template: str, caps: Gst.Caps) -> bool:
    """True when ``factory``'s ``template`` pad can take ``caps`` (mp4mux refuses G.711)."""
    element_factory = Gst.ElementFactory.find(factory)
    if element_factory is None:
        return False
    for pad_template in element_factory.get_static_pad_templates():
        if pad_template.name_template == template:
            return bool(pad_template.get_caps().can_intersect(caps))
    return False


def call_later(seconds: float, func: Callable[[], object], label: str) -> GLib.Source:
    """Run ``func`` once after ``seconds`` on the calling thread's default context (``label``:
    who asked, for the log).

    Source bins call this from the engine loop thread, whose MainContext is thread-default, so
    the timer fires there; they have no handle on the engine's loop object.
    """

    def _fire(*_: object) -> bool:
        try:
            func()
        except Exception:
            log.exception("[%s] unhandled exception in a tracks timer", label)
        return GLib.SOURCE_REMOVE

    source = GLib.timeout_source_new(max(0, int(seconds * 1000)))
    source.set_callback(_fire)
    source.attach(GLib.MainContext.get_thread_default() or GLib.MainContext.default())
    return source
