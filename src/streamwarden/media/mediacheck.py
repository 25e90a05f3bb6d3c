"""Media-level health by sampling: every frame is looked at for a short window, now and then.

A Python pad probe per frame costs more CPU than GStreamer's whole pass-through path (see
bench/results), so the engine does not inspect every frame all the time. A ``MediaSampler``
hangs a probe on the ingest for ``media_sample_seconds`` once per
``media_sample_interval_seconds`` (10 % duty by default) and records three integers per frame;
the window is judged on the loop thread when it ends (``analyze_window``, pure Python):

- timestamp errors: decode timestamps going backwards, or jumping by more than three nominal
  frame intervals (and 100 ms) — a camera clock reset, a splice, frames lost upstream;
- corrupt frames: buffers a parser or depayloader flagged ``CORRUPTED``;
- discontinuity flags (``DISCONT``): informational — rtpjitterbuffer sets it after loss, and a
  looping file sets it at each wrap, which is not a fault;
- the nominal frame rate: from the median frame interval (robust to a few lost frames);
- audio/video drift, when the source has audio: a second sampler on the audio path, and the
  difference of the two tracks' median (arrival time - timestamp): how much later audio arrives
  than video for the same media time.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import dataclass
from itertools import pairwise

from streamwarden.media.gst import Gst

log = logging.getLogger(__name__)

_NONE = Gst.CLOCK_TIME_NONE
_DISCONT = int(Gst.BufferFlags.DISCONT)
_CORRUPTED = int(Gst.BufferFlags.CORRUPTED)
MAX_FRAMES_PER_WINDOW = 2_000  # bounded even for a 1,000 fps source


@dataclass(frozen=True)
class MediaWindow:
    """What one sampling window saw."""

    frames: int
    seconds: float
    timestamp_errors: int
    corrupt_frames: int
    discont_flags: int
    nominal_fps: float | None  # 1 / median frame interval of the window's timestamps
    offset_ms: float | None = None  # median (arrival - timestamp): compared across tracks for drift


def analyze_window(samples: list[tuple[int, int, int, int]], seconds: float) -> MediaWindow:
    """``samples``: (pts, dts, flags, arrival) per frame in arrival order, nanoseconds."""
    stamps = [dts if dts != _NONE else pts for pts, dts, _flags, _at in samples]
    stamps = [t for t in stamps if t != _NONE]
    corrupt = sum(1 for _p, _d, flags, _at in samples if flags & _CORRUPTED)
    discont = sum(1 for _p, _d, flags, _at in samples if flags & _DISCONT)
    offsets = [at - pts for pts, _d, _f, at in samples if pts != _NONE]
    deltas = [b - a for a, b in pairwise(stamps)]
    forward = [d for d in deltas if d > 0]
    nominal_interval = statistics.median(forward) if forward else None
    errors = sum(1 for d in deltas if d < 0)
    if nominal_interval is not None:
        limit = max(3 * nominal_interval, 100 * Gst.MSECOND)
        errors += sum(1 for d in deltas if d > limit)
    fps = None if not nominal_interval else round(Gst.SECOND / nominal_interval, 3)
    return MediaWindow(
        frames=len(samples),
        seconds=seconds,
        timestamp_errors=errors,
        corrupt_frames=corrupt,
        discont_flags=discont,
        nominal_fps=fps,
        offset_ms=round(statistics.median(offsets) / Gst.MSECOND, 3) if offsets else None,
    )


class MediaSampler:
    """Probes one pad for a window at a time; ``begin``/``end`` run on the loop thread."""

    def __init__(self, pad: Gst.Pad, stream_id: str) -> None:
        self._pad: Gst.Pad | None = pad
        self.stream_id = stream_id
        self._probe_id = 0
        self._samples: list[tuple[int, int, int, int]] = []
        self._lock = threading.Lock()
        self.started_at: float | None = None

    @property
    def active(self) -> bool:
        return self._probe_id != 0

    def begin(self, now: float) -> None:
        if self._pad is None or self._probe_id:
            return
        with self._lock:
            self._samples = []
        self.started_at = now
        self._probe_id = self._pad.add_probe(Gst.PadProbeType.BUFFER, self._on_buffer) or 0

    def end(self, now: float) -> MediaWindow | None:
        if self._pad is None or not self._probe_id:
            return None
        self._pad.remove_probe(self._probe_id)
        self._probe_id = 0
        with self._lock:
            samples, self._samples = self._samples, []
        started = self.started_at if self.started_at is not None else now
        self.started_at = None
        return analyze_window(samples, now - started)

    def close(self) -> None:
        """Drop the probe (its closure holds this object: a cycle through C otherwise)."""
        if self._pad is not None and self._probe_id:
            self._pad.remove_probe(self._probe_id)
        self._probe_id = 0
        self._pad = None

    def _on_buffer(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        buffer = info.get_buffer()
        if buffer is not None:
            with self._lock:
                if len(self._samples) < MAX_FRAMES_PER_WINDOW:
                    sample = (buffer.pts, buffer.dts, int(buffer.get_flags()), time.monotonic_ns())
                    self._samples.append(sample)
        return Gst.PadProbeReturn.OK
