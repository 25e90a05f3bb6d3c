"""Fixtures shared by the integration tests: GStreamer init, test clips and RTSP test cameras.

GStreamer imports happen inside the fixtures, so collecting the unit tests needs no ``gi``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamwarden.testing.camera import CameraError, CameraProcess, free_port

# The shared clips: what a small camera sends (320x240, 25 fps, a keyframe every second).
CLIP_SECONDS = 3.0
CLIP_FPS = 25
CLIP_FRAMES = round(CLIP_SECONDS * CLIP_FPS)
CLIP_WIDTH, CLIP_HEIGHT = 320, 240

CameraFactory = Callable[..., CameraProcess]


@pytest.fixture(scope="session")
def gst_init() -> None:
    """Initialises GStreamer once per session, for tests that build pipelines in-process."""
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every clip of the session, so each is encoded once."""
    return tmp_path_factory.mktemp("clips")


def _clip(clip_dir: Path, name: str, audio: bool = False) -> Path:
    from streamwarden.media.clip import ensure_test_clip

    return ensure_test_clip(
        clip_dir / name,
        seconds=CLIP_SECONDS,
        width=CLIP_WIDTH,
        height=CLIP_HEIGHT,
        fps=CLIP_FPS,
        codec="h264",
        key_int=25,
        audio=audio,
        timeout=60,
    )


@pytest.fixture(scope="session")
def h264_mp4(gst_init: None, clip_dir: Path) -> Path:
    """3 s of 320x240 25 fps H.264 in MP4, keyframe every 25 frames."""
    return _clip(clip_dir, "h264.mp4")


@pytest.fixture(scope="session")
def h264_mkv(gst_init: None, clip_dir: Path) -> Path:
    """3 s of 320x240 25 fps H.264 in Matroska, keyframe every 25 frames."""
    return _clip(clip_dir, "h264.mkv")


@pytest.fixture(scope="session")
def h264_ts(gst_init: None, clip_dir: Path) -> Path:
    """3 s of 320x240 25 fps H.264 in MPEG-TS, keyframe every 25 frames."""
    return _clip(clip_dir, "h264.ts")


@pytest.fixture(scope="session")
def h264_aac_mp4(gst_init: None, clip_dir: Path) -> Path:
    """The h264.mp4 clip with a 48 kHz stereo AAC track (a 440 Hz tone)."""
    return _clip(clip_dir, "h264-aac.mp4", audio=True)


@pytest.fixture
def camera() -> Iterator[CameraFactory]:
    """Factory: ``camera(**kw)`` starts a ``CameraProcess(free_port(), **kw)`` and returns it.

    Every camera made is killed at teardown (resumed first if paused), so a failing test leaves no
    process behind. A port taken between ``free_port`` and the bind is retried on another port.
    """
    made: list[CameraProcess] = []

    def start(*, timeout: float = 15.0, **kwargs: Any) -> CameraProcess:
        last_error: CameraError | None = None
        for _attempt in range(3):
            cam = CameraProcess(free_port(), **kwargs)
            made.append(cam)
            try:
                cam.start(timeout=timeout)
            except CameraError as exc:
                if "cannot listen" not in str(exc):
                    raise
                last_error = exc
                continue
            return cam
        assert last_error is not None
        raise last_error

    yield start
    errors: list[BaseException] = []
    for cam in made:
        try:
            cam.close()
        except Exception as exc:  # close the others anyway
            errors.append(exc)
    if errors:
        raise errors[0]
