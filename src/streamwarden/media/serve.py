"""Hand-off from a stream's ingest attempts to the RTSP medias that re-serve it.

The ingest pipeline is rebuilt on every failure, but served clients must not notice: one
``ServeHub`` per stream outlives the attempts. Each attempt gets a ``ServeBranch``
(``queue ! appsink`` off the tee) that hands every encoded frame to the hub, and the hub fans
it out to the ``appsrc`` of every RTSP media currently serving the stream ("outlets").

Why this shape (measured, shared notes "Re-serving a stream whose ingest is rebuilt"):

- appsink → appsrc (``is-live format=time``), every frame on a shallow copy restamped with the
  media's own running time: served timestamps keep increasing across rebuilds (passing the
  ingest's PTS through made RTP time jump back by the old ingest's age) and never repeat.
  Decode order is sent as presentation order: right for cameras, which send no B-frames.
- EOS never crosses the hand-off: it would end the shared media for every client.
- Every new attempt, and an outlet after a stall or a slate, starts at a keyframe. The last
  GOP is kept: a media prerolls on its keyframe (gst-rtsp-server needs a buffer for the SDP),
  and a client alone on a media, or joining during an outage, gets the whole GOP at its PLAY,
  so it has a decodable picture at once instead of after up to a GOP.
- Nothing here blocks: the branch queue is leaky, appsrc pushes never block, and an outlet
  whose appsrc backs up drops frames up to the next keyframe. A slow served side can never
  stall the ingest or the recorder.

Audio (when the source has it) takes the same road on a second appsink and appsrc per media
(``pay1``), never gating anything: video decides when an attempt, a media or a client starts.
A media is built with audio only when this attempt's audio is flowing (its newest buffer primes
the media's audio appsrc, since the SDP needs its caps); audio stamps follow the ingest's own
spacing from an anchor at the media's running time, re-anchored when they drift from it, so the
packets of a codec frame keep their exact spacing. An audio codec, rate or channel change closes
the mount's clients like a video codec change: an AAC config lives in the SDP.

Threads: ``push`` runs on the serve branch's streaming thread; outlets are added and removed on
gst-rtsp-server's client and media threads; ``snapshot`` on any thread. One lock guards the
state; nothing done under it changes element state (appsrc pushes only enqueue).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamwarden.media.audio import AudioTap, audio_codec_of
from streamwarden.media.gst import Gst
from streamwarden.media.pipeline import add_chain, inside, make_element

log = logging.getLogger(__name__)

CODECS = {"video/x-h264": "h264", "video/x-h265": "h265"}

# An outlet whose appsrc holds more than this many frames is stuck: drop to the next keyframe.
OUTLET_MAX_QUEUED = 150
# The cached GOP is abandoned (no priming until the next keyframe) past these sizes.
GOP_MAX_FRAMES = 600
GOP_MAX_BYTES = 32 * 1024 * 1024

# Timestamps of a replayed GOP: one 90 kHz RTP tick (11.1 us) and a bit, so no two are equal.
REPLAY_SPACING = 20 * Gst.USECOND

# An audio appsrc holding more than this many buffers (~2 s of AAC) drops what comes.
AUDIO_MAX_QUEUED = 100
# Audio stamps are re-anchored on the media's running time when they drift further than this.
AUDIO_RESYNC = 300 * Gst.MSECOND
# How long a new media waits for the first audio buffer of an attempt that announced audio.
AUDIO_WAIT_SECONDS = 2.0

_NONE = Gst.CLOCK_TIME_NONE


_COPY = Gst.BufferCopyFlags.FLAGS | Gst.BufferCopyFlags.TIMESTAMPS | Gst.BufferCopyFlags.META
_COPY |= Gst.BufferCopyFlags.MEMORY


def _shallow_copy(buffer: Gst.Buffer) -> Gst.Buffer:
    """A new buffer sharing ``buffer``'s memory, whose timestamps can be changed.

    Not ``buffer.copy()``: in PyGObject that is the boxed copy, a mere reference, and writing
    its timestamps rewrote the ingest's own buffer under the recorder's feet.
    """
    copy = buffer.copy_region(_COPY, 0, buffer.get_size())
    if copy is None:  # pragma: no cover - only on allocation failure
        raise MemoryError("cannot copy a buffer")
    return copy


def _offsets(gop: list[Gst.Buffer]) -> list[int]:
    """How long before the GOP's last frame each frame came (from the ingest's timestamps)."""
    times = [b.dts if b.dts != _NONE else b.pts for b in gop]
    if any(t == _NONE for t in times) or any(b < a for a, b in itertools.pairwise(times)):
        return [(len(gop) - 1 - i) * REPLAY_SPACING for i in range(len(gop))]  # a loop wrapped
    return [times[-1] - t for t in times]


def _running_time(element: Gst.Element) -> int | None:
    """The element's running time now, None when it has no clock (not playing)."""
    clock = element.get_clock()
    if clock is None:
        return None
    now = clock.get_time() - element.get_base_time()
    return int(now) if now >= 0 else None


def codec_of(caps: Gst.Caps | None) -> str | None:
    """``h264``/``h265`` from encoded video caps; None for anything else."""
    if caps is None or caps.get_size() == 0:
        return None
    structure = caps.get_structure(0)
    return CODECS.get(structure.get_name()) if structure is not None else None


def _audio_signature(caps: Gst.Caps) -> str:
    """What a served audio stream's SDP depends on: codec, rate and channels."""
    structure = caps.get_structure(0)
    ok_rate, rate = structure.get_int("rate") if structure is not None else (False, 0)
    ok_channels, channels = structure.get_int("channels") if structure is not None else (False, 0)
    return f"{audio_codec_of(caps)} {rate if ok_rate else '?'} Hz x{channels if ok_channels else '?'}"


def _dimensions(caps: Gst.Caps) -> tuple[int | None, int | None]:
    structure = caps.get_structure(0)
    if structure is None:
        return None, None
    ok_w, width = structure.get_int("width")
    ok_h, height = structure.get_int("height")
    return (width if ok_w else None), (height if ok_h else None)


@dataclass(eq=False)
class _Outlet:
    """One media's appsrc, as the hub sees it.

    Life of an outlet: *primed* with one keyframe so the media can preroll (gst-rtsp-server
    needs a buffer to learn the caps for the SDP; it waits at the payloader and reaches the first
    client), then *armed* at the first PLAY, when the rest of the cached GOP goes in ahead of the
    live frames. Frames pushed before that would reach nobody.
    """

    appsrc: Gst.Element
    caps: Gst.Caps | None = None
    primed: bool = False
    primed_with: Gst.Buffer | None = None  # the keyframe it prerolled on, sent at its first PLAY
    armed: bool = False
    waiting: bool = True  # for the next keyframe
    discont: bool = True
    need_data_id: int = 0
    clients: int = 0
    dead: bool = False
    last_stamp: int = -1  # running time given to the last buffer pushed (-1: appsrc stamped it)
    audio: Gst.Element | None = None  # the media's audio appsrc (pay1), if it carries audio
    audio_caps: Gst.Caps | None = None
    audio_primed: bool = False  # an audio buffer was offered for its preroll
    audio_fed: bool = False  # its audio appsrc took a buffer (the audio stream can preroll)
    audio_need_data_id: int = 0
    audio_discont: bool = True
    audio_anchor: tuple[int, int] | None = None  # (media running time, ingest running time)
    audio_last_stamp: int = -1


class ServeHub:
    """Per-stream fan-out from the current ingest attempt to every media serving the stream."""

    def __init__(
        self,
        stream_id: str,
        *,
        on_codec_change: Callable[[ServeHub, str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_id = stream_id
        self._clock = clock
        self._on_codec_change = on_codec_change
        self._lock = threading.Lock()
        self._caps_known = threading.Condition(self._lock)
        self._attempt = 0
        self._gated = True
        self._caps: Gst.Caps | None = None
        self.codec: str | None = None
        self.width: int | None = None
        self.height: int | None = None
        self._gop: list[Gst.Buffer] | None = None
        self._gop_bytes = 0
        self._outlets: dict[object, _Outlet] = {}
        self.closed = False
        self.created_at = clock()
        self.last_frame_at: float | None = None
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_sent = 0  # frames delivered to clients (per client: a frame to 3 clients is 3)
        self.bytes_sent = 0
        self.frames_dropped = 0  # frames an outlet skipped (waiting for a keyframe after a stall)
        self.slate_frames = 0
        self.medias_total = 0
        self.codec_changes = 0
        self._audio_expected: str | None = None  # codec the current attempt announced
        self._audio_caps: Gst.Caps | None = None
        self._audio_signature: str | None = None  # of the audio clients were last given
        self._audio_last: Gst.Buffer | None = None  # this attempt's newest audio buffer
        self.audio_codec: str | None = None
        self.audio_frames_in = 0
        self.audio_frames_sent = 0
        self.audio_frames_dropped = 0

    # -- ingest side (streaming threads, loop thread) -------------------------------------------
    def new_attempt(self) -> int:
        """A new ingest attempt starts: its frames pass only from its first keyframe on."""
        with self._lock:
            self._attempt += 1
            self._gated = True
            self._audio_expected = None
            self._audio_last = None
            for outlet in self._outlets.values():
                outlet.audio_anchor = None  # the new ingest's running time starts elsewhere
                outlet.audio_discont = True
            return self._attempt

    def expect_audio(self, attempt: int, codec: str) -> None:
        """This attempt carries ``codec`` audio: new medias wait (briefly) for it."""
        with self._lock:
            if attempt == self._attempt:
                self._audio_expected = codec

    def audio_ended(self, attempt: int) -> None:
        """This attempt's audio is over: medias built from now on are video-only."""
        with self._lock:
            if attempt == self._attempt:
                self._audio_expected = None
                self._audio_last = None

    def push_audio(self, attempt: int, buffer: Gst.Buffer, caps: Gst.Caps | None, running_time: int) -> None:
        """One encoded audio frame (``running_time``: the ingest's); fanned out, never blocking."""
        changed: tuple[str, str] | None = None
        with self._lock:
            if attempt != self._attempt or self.closed:
                return
            if caps is not None and (self._audio_caps is None or not caps.is_equal(self._audio_caps)):
                changed = self._new_audio_caps(caps)
            if self.audio_codec is None:
                return  # nothing we can serve
            first = self._audio_last is None
            self._audio_last = buffer
            self.audio_frames_in += 1
            if first:
                self._caps_known.notify_all()
            if not self._gated:  # audio joins once this attempt's video does
                for outlet in self._outlets.values():
                    self._deliver_audio(outlet, buffer, running_time)
        if changed is not None and self._on_codec_change is not None:
            self._on_codec_change(self, *changed)

    def _new_audio_caps(self, caps: Gst.Caps) -> tuple[str, str] | None:
        """Adopt new audio caps (locked); (old, new) when the clients' SDP no longer fits."""
        codec = audio_codec_of(caps)
        self._audio_caps = caps
        self.audio_codec = codec
        if codec is None:
            log.warning("[%s] cannot re-serve audio %s: audio not served", self.stream_id, caps)
            return None
        old, new = self._audio_signature, _audio_signature(caps)
        self._audio_signature = new
        if old is not None and old != new:
            self.codec_changes += 1
            for outlet in self._outlets.values():
                self._forget(outlet)  # its pay1 and SDP are for the old audio; the server closes it
            self._outlets.clear()
            return f"audio {old}", f"audio {new}"
        if old is None:
            log.info("[%s] serving %s audio", self.stream_id, new)
        return None

    def _deliver_audio(self, outlet: _Outlet, buffer: Gst.Buffer, running_time: int) -> None:
        """A live audio frame for one outlet (locked): after its first PLAY, or until it has
        one buffer to preroll on; bounded, never blocking."""
        appsrc = outlet.audio
        if appsrc is None or outlet.dead or (outlet.audio_fed and not outlet.armed):
            return
        if appsrc.get_property("current-level-buffers") >= AUDIO_MAX_QUEUED:
            self.audio_frames_dropped += 1
            outlet.audio_anchor = None
            outlet.audio_discont = True
            return
        self._push_audio(outlet, buffer, self._audio_stamp(outlet, running_time))

    @staticmethod
    def _audio_stamp(outlet: _Outlet, running_time: int) -> int:
        """Ingest spacing from an anchor on the media's clock; re-anchored past AUDIO_RESYNC."""
        assert outlet.audio is not None
        now = _running_time(outlet.audio)
        if now is None:
            return _NONE  # appsrc's do-timestamp stamps it
        anchor = outlet.audio_anchor
        stamp = now if anchor is None or running_time == _NONE else anchor[0] + running_time - anchor[1]
        if anchor is None or running_time == _NONE or abs(stamp - now) > AUDIO_RESYNC:
            outlet.audio_anchor = (now, running_time) if running_time != _NONE else None
            stamp = now
        return max(stamp, outlet.audio_last_stamp + 1)

    def _push_audio(self, outlet: _Outlet, buffer: Gst.Buffer, stamp: int) -> bool:
        """Into the media's audio appsrc (locked); caps travel with the first buffer after a change."""
        assert outlet.audio is not None
        copy = _shallow_copy(buffer)
        copy.pts = copy.dts = stamp
        if outlet.audio_discont:
            copy.set_flags(Gst.BufferFlags.DISCONT)
            outlet.audio_discont = False
        caps = self._audio_caps
        if caps is not None and (outlet.audio_caps is None or not outlet.audio_caps.is_equal(caps)):
            outlet.audio_caps = caps
            result = outlet.audio.emit("push-sample", Gst.Sample.new(copy, caps, None, None))
        else:
            result = outlet.audio.emit("push-buffer", copy)
        if result != Gst.FlowReturn.OK:
            outlet.audio_caps = None
            outlet.audio_discont = True
            return False
        outlet.audio_fed = True
        if stamp != _NONE:
            outlet.audio_last_stamp = stamp
        self.audio_frames_sent += outlet.clients
        return True

    def regate(self, attempt: int) -> None:
        """The branch lost frames (its queue leaked): resume at the next keyframe."""
        with self._lock:
            if attempt == self._attempt:
                self._gated = True

    def push(self, attempt: int, buffer: Gst.Buffer, caps: Gst.Caps | None) -> None:
        """One encoded frame from the ingest; fanned out to every outlet, never blocking."""
        keyframe = not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT)
        changed: tuple[str, str] | None = None
        with self._lock:
            if attempt != self._attempt or self.closed:
                return  # a disposed attempt still draining
            if self._gated:
                if not keyframe:
                    return
                self._gated = False
            if caps is not None and (self._caps is None or not caps.is_equal(self._caps)):
                changed = self._new_caps(caps)
                if self.codec is None:
                    return  # not H.264/H.265: nothing we can serve
            size = buffer.get_size()
            self.frames_in += 1
            self.bytes_in += size
            self.last_frame_at = self._clock()
            self._cache(buffer, keyframe, size)
            for outlet in self._outlets.values():
                self._deliver(outlet, buffer, keyframe, size)
        if changed is not None and self._on_codec_change is not None:
            self._on_codec_change(self, *changed)

    def _new_caps(self, caps: Gst.Caps) -> tuple[str, str] | None:
        """Adopt new caps (locked); returns (old, new) codec when the codec changed."""
        codec = codec_of(caps)
        old = self.codec
        self._caps = caps
        self.codec = codec
        self.width, self.height = _dimensions(caps)
        self._gop = None
        self._gop_bytes = 0
        self._caps_known.notify_all()
        if codec is None:
            log.warning("[%s] cannot re-serve %s: only H.264 and H.265 are served", self.stream_id, caps)
        if old is not None and codec is not None and old != codec:
            self.codec_changes += 1
            for outlet in self._outlets.values():
                self._forget(outlet)  # its payloader is for the old codec; the server closes it
            self._outlets.clear()
            return old, codec
        log.info("[%s] serving %s %sx%s", self.stream_id, codec, self.width, self.height)
        return None

    def _cache(self, buffer: Gst.Buffer, keyframe: bool, size: int) -> None:
        if keyframe:
            self._gop = [buffer]
            self._gop_bytes = size
        elif self._gop is not None:
            if len(self._gop) >= GOP_MAX_FRAMES or self._gop_bytes + size > GOP_MAX_BYTES:
                self._gop = None  # an endless GOP: new medias wait for the next keyframe instead
            else:
                self._gop.append(buffer)
                self._gop_bytes += size

    def _deliver(self, outlet: _Outlet, buffer: Gst.Buffer, keyframe: bool, size: int) -> None:
        """A live frame for one outlet (locked): gated, bounded, never blocking."""
        if outlet.dead or not outlet.armed:
            return  # not playing yet: the GOP replay at PLAY will include this frame
        if outlet.waiting:
            if not keyframe:
                self.frames_dropped += 1
                return
            outlet.waiting = False
        if outlet.appsrc.get_property("current-level-buffers") >= OUTLET_MAX_QUEUED:
            outlet.waiting = True  # the media is not consuming: skip to the next keyframe
            self.frames_dropped += 1
            return
        self._push(outlet, buffer, size)

    def _push(self, outlet: _Outlet, buffer: Gst.Buffer, size: int, stamp: int | None = None) -> bool:
        """Into the appsrc (locked), stamped with the media's running time now (or ``stamp``).

        Stamps never repeat or go back for one media; without a clock (media not running yet)
        appsrc's do-timestamp stamps the buffer on its way out instead.
        """
        if stamp is None:
            now = _running_time(outlet.appsrc)
            stamp = _NONE if now is None else max(now, outlet.last_stamp + REPLAY_SPACING)
        copy = _shallow_copy(buffer)
        copy.pts = copy.dts = stamp
        if outlet.discont:
            copy.set_flags(Gst.BufferFlags.DISCONT)
            outlet.discont = False
        if self._caps is not None and (outlet.caps is None or not outlet.caps.is_equal(self._caps)):
            outlet.caps = self._caps
            result = outlet.appsrc.emit("push-sample", Gst.Sample.new(copy, self._caps, None, None))
        else:
            result = outlet.appsrc.emit("push-buffer", copy)
        if result != Gst.FlowReturn.OK:
            # FLUSHING: the media is not running (yet, or any more): restart at a keyframe.
            outlet.waiting = outlet.discont = True
            outlet.caps = None
            return False
        if stamp != _NONE:
            outlet.last_stamp = stamp
        self.frames_sent += outlet.clients
        self.bytes_sent += size * outlet.clients
        return True

    def _replay(self, outlet: _Outlet) -> int:
        """Push the cached GOP, then live frames continue from it (locked). Returns frames pushed.

        Timestamps keep the GOP's own spacing and end at the media's running time now, so a
        client measuring frame rate (ffmpeg probes ~20 frames) sees a real one; where that does
        not fit after what the media already sent (a media that just started), they bunch up
        REPLAY_SPACING apart instead. Without a clock appsrc stamps them.
        """
        gop = self._gop or []
        skip = not outlet.armed and bool(gop) and gop[0] is outlet.primed_with
        outlet.primed_with = None
        if not gop:
            outlet.armed = outlet.waiting = True  # nothing cached: live from the next keyframe
            return 0
        offsets = _offsets(gop)
        if skip:  # the keyframe the media prerolled on waits at its payloader for this PLAY
            gop, offsets = gop[1:], offsets[1:]
        now = _running_time(outlet.appsrc)
        pushed = 0
        for buffer, offset in zip(gop, offsets, strict=True):
            stamp = _NONE if now is None else max(now - offset, outlet.last_stamp + REPLAY_SPACING)
            if not self._push(outlet, buffer, buffer.get_size(), stamp):
                break
            pushed += 1
        outlet.armed = True
        outlet.waiting = pushed < len(gop)  # all of it sent: live deltas follow on
        return pushed

    # -- served side (gst-rtsp-server threads) ---------------------------------------------------
    def wait_for_codec(self, timeout: float) -> str | None:
        """The codec, waiting up to ``timeout`` s for the first frame of a new stream."""
        deadline = self._clock() + timeout
        with self._lock:
            while self.codec is None and not self.closed:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._caps_known.wait(min(remaining, 0.5))
            return self.codec

    def wait_for_audio(self, timeout: float) -> str | None:
        """The audio codec to serve, once this attempt's audio flows; None: serve video only.

        Waits (up to ``timeout`` s) only when the attempt announced audio that has not come yet.
        """
        deadline = self._clock() + timeout
        with self._lock:
            while self._audio_expected is not None and self._audio_last is None and not self.closed:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._caps_known.wait(min(remaining, 0.5))
            return self.audio_codec if self._audio_last is not None else None

    def add_outlet(self, key: object, appsrc: Gst.Element, audio: Gst.Element | None = None) -> bool:
        """A media is being prepared: give it one keyframe (and audio frame) to preroll on."""
        with self._lock:
            if self.closed:
                return False
            old = self._outlets.pop(key, None)
            if old is not None:
                self._forget(old)
            outlet = _Outlet(appsrc, audio=audio)
            self._outlets[key] = outlet
            self.medias_total += 1
            if not self._prime(outlet):
                # Its appsrc refuses data until it runs, and asks for data as soon as it does.
                outlet.need_data_id = appsrc.connect("need-data", self._on_need_data, outlet)
            if audio is not None and not self._prime_audio(outlet):
                outlet.audio_need_data_id = audio.connect("need-data", self._on_audio_need_data, outlet)
            return True

    def _prime_audio(self, outlet: _Outlet) -> bool:
        """This attempt's newest audio frame, stamped 0 (locked); False when refused."""
        buffer = self._audio_last
        if buffer is not None and outlet.audio is not None and not self._push_audio(outlet, buffer, 0):
            return False
        outlet.audio_primed = True  # nothing cached: the next live audio frame feeds it
        return True

    def _on_audio_need_data(self, _appsrc: Gst.Element, _length: int, outlet: _Outlet) -> None:
        # The media's streaming thread: its audio appsrc runs now.
        with self._lock:
            if outlet.dead or outlet.audio_primed or self._prime_audio(outlet):
                self._forget_audio(outlet)

    def _prime(self, outlet: _Outlet) -> bool:
        """The cached keyframe, stamped 0 (locked); False when the appsrc refuses data."""
        if not self._gop:
            outlet.primed = outlet.armed = True  # nothing cached: live frames from the next keyframe
            return True
        if not self._push(outlet, self._gop[0], 0, 0):
            return False
        outlet.primed = True
        outlet.primed_with = self._gop[0]
        return True

    def _on_need_data(self, _appsrc: Gst.Element, _length: int, outlet: _Outlet) -> None:
        # The media's streaming thread: its appsrc runs now.
        with self._lock:
            if outlet.dead or outlet.primed or self._prime(outlet):
                self._forget(outlet, dead=outlet.dead)

    @staticmethod
    def _forget(outlet: _Outlet, dead: bool = True) -> None:
        outlet.dead = dead
        if outlet.need_data_id:
            outlet.appsrc.disconnect(outlet.need_data_id)
            outlet.need_data_id = 0
        if dead:
            ServeHub._forget_audio(outlet)

    @staticmethod
    def _forget_audio(outlet: _Outlet) -> None:
        if outlet.audio_need_data_id and outlet.audio is not None:
            outlet.audio.disconnect(outlet.audio_need_data_id)
            outlet.audio_need_data_id = 0

    def on_play(self, key: object, *, alone: bool, outage_hold: bool) -> int:
        """A client's PLAY on a media: send the cached GOP when that harms nobody.

        Always on the media's first PLAY (what it sent before reached nobody); again when this
        client is alone on a media that outlived its previous clients; and during an outage in
        hold mode, when the others receive nothing else anyway. A shared media cannot be primed
        for one client, so a client joining others starts at the next keyframe.
        """
        with self._lock:
            outlet = self._outlets.get(key)
            if outlet is None or outlet.dead or not outlet.primed:
                return 0
            if outlet.armed and not alone and not outage_hold:
                return 0
            return self._replay(outlet)

    def remove_outlet(self, key: object) -> None:
        with self._lock:
            outlet = self._outlets.pop(key, None)
            if outlet is not None:
                self._forget(outlet)

    def set_clients(self, counts: dict[object, int]) -> None:
        """Clients per media, from the server's periodic count (for the sent counters)."""
        with self._lock:
            for key, outlet in self._outlets.items():
                outlet.clients = counts.get(key, 0)

    def push_slate(self, buffer: Gst.Buffer, caps: Gst.Caps) -> int:
        """One "signal lost" picture to every playing outlet; live resumes at its next keyframe."""
        pushed = 0
        with self._lock:
            saved = self._caps
            self._caps = caps
            try:
                for outlet in self._outlets.values():
                    if outlet.dead or not outlet.armed:
                        continue
                    if self._push(outlet, buffer, buffer.get_size()):
                        pushed += 1
                    outlet.waiting = outlet.discont = True
            finally:
                self._caps = saved
            self.slate_frames += pushed
        return pushed

    def outage_seconds(self) -> float:
        """Seconds since the last frame (since creation when there was none yet)."""
        with self._lock:
            last = self.last_frame_at if self.last_frame_at is not None else self.created_at
        return max(0.0, self._clock() - last)

    def has_outlets(self) -> bool:
        with self._lock:
            return bool(self._outlets)

    def close(self) -> None:
        """The stream stops being served: no more outlets, waiters released."""
        with self._lock:
            self.closed = True
            for outlet in self._outlets.values():
                self._forget(outlet)
            self._outlets.clear()
            self._gop = None
            self._audio_last = None
            self._caps_known.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            last = self.last_frame_at
            return {
                "codec": self.codec,
                "width": self.width,
                "height": self.height,
                "medias": len(self._outlets),
                "clients": sum(o.clients for o in self._outlets.values()),
                "frames_in": self.frames_in,
                "bytes_in": self.bytes_in,
                "frames_sent": self.frames_sent,
                "bytes_sent": self.bytes_sent,
                "frames_dropped": self.frames_dropped,
                "slate_frames": self.slate_frames,
                "codec_changes": self.codec_changes,
                "cached_gop_frames": len(self._gop) if self._gop else 0,
                "audio_codec": self.audio_codec if self._audio_last is not None else None,
                "audio_frames_in": self.audio_frames_in,
                "audio_frames_sent": self.audio_frames_sent,
                "audio_frames_dropped": self.audio_frames_dropped,
                "last_frame_age_seconds": None if last is None else round(self._clock() - last, 3),
            }


class ServeBranch:
    """One attempt's hand-off: ``queue (leaky) ! appsink`` off the tee, feeding the stream's hub;
    the same off the audio tee when the source has audio.

    The queue gives the appsink a thread of its own, so the Python per frame never runs on the
    thread that feeds the recorder; when it leaks, the hub resumes at the next keyframe.
    """

    name = "serve"

    def __init__(self, hub: ServeHub) -> None:
        self.hub = hub
        self.stream_id = hub.stream_id
        self._attempt = 0
        self._queue: Gst.Element | None = None
        self._sink: Gst.Element | None = None
        self._audio_queue: Gst.Element | None = None
        self._audio_sink: Gst.Element | None = None
        self._failed = False
        self._audio_failed = False

    def attach(self, pipeline: Gst.Pipeline, tee: Gst.Element, audio: AudioTap | None = None) -> None:
        queue = self._queue_for("serve-queue")
        queue.connect("overrun", self._on_overrun)
        sink = self._sink_for("serve-sink", max_buffers=2, on_sample=self._on_sample)
        add_chain(pipeline, tee, [queue, sink])
        self._queue, self._sink = queue, sink
        self._attempt = self.hub.new_attempt()
        if audio is not None:
            audio_queue = self._queue_for("serve-audio-queue")
            # Audio comes in bursts of small buffers: room for a few more than the video's two.
            audio_sink = self._sink_for("serve-audio-sink", max_buffers=8, on_sample=self._on_audio_sample)
            audio_sink.connect("eos", self._on_audio_eos)
            add_chain(pipeline, audio.tee, [audio_queue, audio_sink])
            self._audio_queue, self._audio_sink = audio_queue, audio_sink
            self.hub.expect_audio(self._attempt, audio.track.codec)

    @staticmethod
    def _queue_for(name: str) -> Gst.Element:
        queue = make_element("queue", name)
        queue.set_property("max-size-buffers", 0)
        queue.set_property("max-size-bytes", 0)
        queue.set_property("max-size-time", 2 * Gst.SECOND)
        queue.set_property("leaky", 2)  # drop the oldest: the served side never slows the ingest
        return queue

    @staticmethod
    def _sink_for(
        name: str, *, max_buffers: int, on_sample: Callable[[Gst.Element], Gst.FlowReturn]
    ) -> Gst.Element:
        sink = make_element("appsink", name)
        sink.set_property("emit-signals", True)
        sink.set_property("sync", False)
        sink.set_property("async", False)
        sink.set_property("drop", True)
        sink.set_property("max-buffers", max_buffers)
        sink.set_property("enable-last-sample", False)
        sink.connect("new-sample", on_sample)
        return sink

    def _on_overrun(self, _queue: Gst.Element) -> None:
        self.hub.regate(self._attempt)

    def _on_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        # Streaming thread: hand the frame over, nothing else.
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.OK
        buffer = sample.get_buffer()
        if buffer is not None:
            try:
                self.hub.push(self._attempt, buffer, sample.get_caps())
            except Exception:
                if not self._failed:  # once per attempt, not once per frame
                    self._failed = True
                    log.exception("[%s] serve hand-off failed", self.stream_id)
        return Gst.FlowReturn.OK

    def _on_audio_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        # Streaming thread: the ingest's running time goes along (audio keeps its own spacing).
        sample = sink.emit("pull-sample")
        buffer = sample.get_buffer() if sample is not None else None
        if sample is None or buffer is None:
            return Gst.FlowReturn.OK
        segment = sample.get_segment()
        running = _NONE
        if segment is not None and buffer.pts != _NONE:
            running = segment.to_running_time(Gst.Format.TIME, buffer.pts)
        try:
            self.hub.push_audio(self._attempt, buffer, sample.get_caps(), running)
        except Exception:
            if not self._audio_failed:
                self._audio_failed = True
                log.exception("[%s] serve audio hand-off failed", self.stream_id)
        return Gst.FlowReturn.OK

    def _on_audio_eos(self, _sink: Gst.Element) -> None:
        # The attempt dropped its audio (or the camera ended that stream): no more for new medias.
        self.hub.audio_ended(self._attempt)

    def owns(self, element: Gst.Object) -> bool:
        mine = (self._queue, self._sink, self._audio_queue, self._audio_sink)
        return any(e is not None and inside(element, e) for e in mine)

    def on_message(self, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.ERROR:
            error, _debug = message.parse_error()
            log.warning("[%s] serve branch error: %s", self.stream_id, error.message)

    def on_error_sync(self) -> None:
        return None  # appsink never returns an error to the tee: nothing to cut off

    def needs_finish(self) -> bool:
        return False

    def finish(self, pipeline: Gst.Pipeline, bus: Gst.Bus, deadline: float) -> None:
        return None

    def disposed(self) -> None:
        return None
