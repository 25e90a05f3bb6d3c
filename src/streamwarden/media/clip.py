"""Synthetic test clips for the integration tests and ``streamwarden demo``.

The clips imitate what a camera sends: 8-bit 4:2:0 H.264/H.265 without B-frames and with a
keyframe every ``key_int`` frames, and a moving picture (bouncing ball plus a running clock) so a
frozen stream is visible at a glance.

``make_test_clip`` blocks until the file is written. It runs its own pipeline and polls its bus
without a main loop, so it may be called from any thread except the GLib main-loop thread (which it
would stall for the whole encode).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import TypedDict, Unpack

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

__all__ = ["ClipError", "ClipOptions", "ensure_test_clip", "make_test_clip"]

log = logging.getLogger(__name__)

_CONTAINER_BY_SUFFIX = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mp4", ".mkv": "mkv", ".ts": "ts"}
_MUXERS = {"mp4": "mp4mux", "mkv": "matroskamux", "ts": "mpegtsmux"}
_ENCODERS = {"h264": ("x264enc", "h264parse"), "h265": ("x265enc", "h265parse")}
# Debian 12 has both; avenc_aac (gstreamer1.0-libav) is the one the Makefile installs for sure.
_AAC_ENCODERS = ("avenc_aac", "voaacenc")
_AUDIO_RATE = 48000


class ClipOptions(TypedDict, total=False):
    """The keyword options of ``make_test_clip``, so ``ensure_test_clip`` stays type-checked."""

    seconds: float
    width: int
    height: int
    fps: int
    codec: str
    container: str | None
    key_int: int
    audio: bool
    timeout: float


class ClipError(RuntimeError):
    """The clip could not be made: missing element, pipeline error or timeout."""


def _require_element(name: str, package_hint: str) -> None:
    if Gst.ElementFactory.find(name) is None:
        raise ClipError(f"GStreamer element {name!r} is not available (install {package_hint})")


def _container_for(path: Path, container: str | None) -> str:
    if container is not None:
        if container not in _MUXERS:
            raise ValueError(f"container must be one of {sorted(_MUXERS)}, got {container!r}")
        return container
    try:
        return _CONTAINER_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"cannot tell the container from {path.name!r}: use a suffix in "
            f"{sorted(_CONTAINER_BY_SUFFIX)} or pass container="
        ) from None


def _describe(
    *, frames: int, width: int, height: int, fps: int, codec: str, container: str, key_int: int, audio: bool
) -> str:
    """Builds the gst-launch description; the file sink is named ``sink`` and set by the caller."""
    encoder, parser = _ENCODERS[codec]
    # format=I420 before the encoder: left open, x264enc picks Y444_10LE (High 4:4:4 10-bit), which no
    # camera sends. zerolatency also disables B-frames, like most cameras.
    enc = f"{encoder} tune=zerolatency speed-preset=ultrafast key-int-max={key_int}"
    if codec == "h265":
        enc += " option-string=repeat-headers=1"  # VPS/SPS/PPS at every keyframe, as x264enc does
    overlay = 'timeoverlay font-desc="Sans 14" ! ' if Gst.ElementFactory.find("timeoverlay") else ""
    desc = (
        f"{_MUXERS[container]} name=mux ! filesink name=sink "
        f"videotestsrc num-buffers={frames} pattern=ball "
        f"! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1,pixel-aspect-ratio=1/1 "
        f"! {overlay}{enc} ! {parser} ! queue ! mux. "
    )
    if audio:
        aac = next((name for name in _AAC_ENCODERS if Gst.ElementFactory.find(name)), None)
        if aac is None:
            raise ClipError(f"no AAC encoder available (tried {', '.join(_AAC_ENCODERS)})")
        # One audio buffer per video frame, so both branches end at the same time.
        samples = _AUDIO_RATE // fps
        desc += (
            f"audiotestsrc wave=sine freq=440 volume=0.2 samplesperbuffer={samples} num-buffers={frames} "
            f"! audio/x-raw,rate={_AUDIO_RATE},channels=2 ! audioconvert ! audioresample ! {aac} "
            f"! aacparse ! queue ! mux. "
        )
    return desc


def _run_to_eos(pipeline: Gst.Pipeline, timeout: float) -> None:
    """Plays ``pipeline`` until EOS; raises on ERROR or when ``timeout`` seconds pass first."""
    bus = pipeline.get_bus()
    assert bus is not None
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        raise ClipError("the encoding pipeline refused to start (state change to PLAYING failed)")
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClipError(f"encoding did not finish within {timeout:.0f} s")
        msg = bus.timed_pop_filtered(int(remaining * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if msg is None:
            continue  # timed out: the loop head raises
        if msg.type == Gst.MessageType.EOS:
            return
        err, debug = msg.parse_error()
        source = msg.src.get_name() if msg.src is not None else "?"
        raise ClipError(f"encoding failed in {source}: {err.message} ({debug})")


def make_test_clip(
    path: Path,
    *,
    seconds: float = 4.0,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    codec: str = "h264",
    container: str | None = None,
    key_int: int = 25,
    audio: bool = False,
    timeout: float = 120.0,
) -> Path:
    """Encodes a clip of ``round(seconds * fps)`` frames to ``path`` and returns ``path``.

    The container comes from the suffix (.mp4/.mkv/.ts) unless ``container`` ("mp4", "mkv", "ts") is
    given. The file is written under a temporary name in the same directory and renamed into place,
    so a reader (or a concurrent ``ensure_test_clip``) never sees a half-written clip.
    """
    path = Path(path)
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {sorted(_ENCODERS)}, got {codec!r}")
    kind = _container_for(path, container)
    if seconds <= 0 or width <= 0 or height <= 0 or fps <= 0 or key_int <= 0:
        raise ValueError("seconds, width, height, fps and key_int must be positive")
    if codec == "h264" and (width % 2 or height % 2):
        raise ValueError("I420 needs an even width and height")
    Gst.init(None)  # idempotent
    encoder = _ENCODERS[codec][0]
    _require_element(encoder, "gstreamer1.0-plugins-ugly" if codec == "h264" else "gstreamer1.0-plugins-bad")
    _require_element(_MUXERS[kind], "gstreamer1.0-plugins-good / -bad")

    frames = max(1, math.ceil(seconds * fps - 1e-9))
    desc = _describe(
        frames=frames,
        width=width,
        height=height,
        fps=fps,
        codec=codec,
        container=kind,
        key_int=key_int,
        audio=audio,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique hidden name in the same directory (same filesystem, so the rename is atomic); filesink
    # creates it, so it gets the usual umask permissions rather than mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        pipeline = Gst.parse_launch(desc)
    except GLib.Error as exc:
        raise ClipError(f"cannot build the encoding pipeline: {exc.message}") from exc
    assert isinstance(pipeline, Gst.Pipeline)
    try:
        sink = pipeline.get_by_name("sink")
        assert sink is not None
        sink.set_property("location", str(tmp))
        started = time.monotonic()
        _run_to_eos(pipeline, timeout)
        # NULL before the rename: filesink flushes and closes the file on the way down.
        pipeline.set_state(Gst.State.NULL)
        if tmp.stat().st_size == 0:
            raise ClipError(f"encoding produced an empty file for {path}")
        os.replace(tmp, path)
        log.info(
            "made %s (%d frames, %s/%s) in %.2f s", path, frames, codec, kind, time.monotonic() - started
        )
    finally:
        pipeline.set_state(Gst.State.NULL)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def ensure_test_clip(path: Path, **kwargs: Unpack[ClipOptions]) -> Path:
    """Makes the clip only when ``path`` does not exist yet; the options are not compared.

    Callers that vary the options should encode them in the file name.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size > 0:
        return path
    return make_test_clip(path, **kwargs)
