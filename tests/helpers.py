"""Small helpers shared by the integration tests: bounded polling and ffprobe as an outside judge."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FfprobeError", "count_frames", "count_packets", "ffprobe_json", "wait_until"]


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, message: str = ""
) -> None:
    """Polls ``predicate`` until it is true; AssertionError after ``timeout`` seconds.

    Tests wait for conditions, never for fixed sleeps: a sleep is either too short on a loaded
    machine or wastes time on an idle one.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(message or f"condition not met within {timeout:.1f} s")
        time.sleep(min(interval, remaining))


class FfprobeError(AssertionError):
    """ffprobe failed; ``stderr`` holds its message (e.g. "401 Unauthorized")."""

    def __init__(self, target: str, returncode: int | None, stderr: str) -> None:
        super().__init__(f"ffprobe {target} failed (exit {returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def _input_args(path_or_url: str) -> list[str]:
    # TCP interleaving: the camera and the engine both use it, and UDP would need free port pairs.
    if path_or_url.startswith(("rtsp://", "rtsps://")):
        return ["-rtsp_transport", "tcp", "-i", path_or_url]
    return ["-i", path_or_url]


def _run_ffprobe(args: list[str], target: str, timeout: float) -> str:
    try:
        proc = subprocess.run(
            ["ffprobe", "-hide_banner", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise FfprobeError(target, None, f"timed out after {timeout:.0f} s. {stderr}") from exc
    if proc.returncode != 0:
        raise FfprobeError(target, proc.returncode, proc.stderr)
    return proc.stdout


def ffprobe_json(path_or_url: str, timeout: float = 20) -> dict[str, Any]:
    """``ffprobe -show_streams -show_format`` as a dict; FfprobeError (with stderr) on failure."""
    out = _run_ffprobe(
        ["-v", "error", "-print_format", "json", "-show_streams", "-show_format", *_input_args(path_or_url)],
        path_or_url,
        timeout,
    )
    result: dict[str, Any] = json.loads(out)
    return result


def count_frames(path: str, timeout: float = 30) -> int:
    """Video packets (= frames for H.264/H.265 in these files) that ffprobe reads from ``path``."""
    return count_packets(path, "v:0", timeout)


def count_packets(path: str, stream: str = "a:0", timeout: float = 30) -> int:
    """Packets ffprobe reads from one stream of ``path`` (``a:0``: the first audio stream)."""
    out = _run_ffprobe(
        [
            "-v",
            "error",
            "-count_packets",
            "-select_streams",
            stream,
            "-show_entries",
            "stream=nb_read_packets",
            "-print_format",
            "json",
            *_input_args(path),
        ],
        path,
        timeout,
    )
    streams = json.loads(out).get("streams", [])
    if not streams:
        raise AssertionError(f"{path} has no stream {stream}")
    return int(streams[0]["nb_read_packets"])
