"""Attribution probe: the engine's per-stream pipeline shape plus per-frame Python pad probes, no engine.

One process, one pipeline per stream (as the engine builds them):
``rtspsrc ! rtph264depay ! h264parse ! queue ! tee``, ``tee. ! queue ! fakesink`` and
``tee. ! queue (leaky) ! splitmuxsink (matroskamux, unbuffered filesink)``, and ``--probes K``
Python buffer probes per frame doing what the engine's do (read the buffer, its flags, its
size, the time): on the tee's sink pad, the record queue's sink pad and the record queue's
src pad. Comparing it with the same shape in gst-launch (no Python) and with streamwarden
separates the cost of the shape, of Python per frame, and of the rest of the engine.

    python bench/sut_probes.py --probes 3 --record-dir DIR URL [URL ...]

Prints ``READY {}``; SIGTERM/SIGINT sends EOS to every pipeline, waits (bounded), exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402


class Counter:
    """What an engine probe does per frame: a few reads and a timestamp."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.keyframes = 0
        self.last = 0.0

    def probe(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        buffer = info.get_buffer()
        if buffer is not None:
            self.frames += 1
            self.bytes += buffer.get_size()
            if not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT):
                self.keyframes += 1
            self.last = time.monotonic()
        return Gst.PadProbeReturn.OK


def describe(url: str, location: str) -> str:
    return (
        f"rtspsrc location={url} protocols=tcp latency=200 ! rtph264depay ! h264parse config-interval=-1 "
        "! queue name=ingest ! tee name=tee allow-not-linked=true "
        "tee. ! queue ! fakesink sync=false async=false "
        "tee. ! queue name=record max-size-time=5000000000 max-size-buffers=0 max-size-bytes=0 "
        "leaky=downstream "
        "! splitmuxsink muxer-factory=matroskamux max-size-time=10000000000 "
        f'sink="filesink buffer-mode=2 async=false" location={location}'
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--record-dir", type=Path, required=True)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args(argv)
    Gst.init(None)
    loop = GLib.MainLoop()
    pipelines: list[Gst.Element] = []
    counters: list[Counter] = []
    for index, url in enumerate(args.urls):
        pipeline = Gst.parse_launch(describe(url, f"{args.record_dir}/s{index:03d}-%05d.mkv"))
        assert isinstance(pipeline, Gst.Bin)
        pads: list[Gst.Pad | None] = []
        tee, record = pipeline.get_by_name("tee"), pipeline.get_by_name("record")
        assert tee is not None and record is not None
        pads = [tee.get_static_pad("sink"), record.get_static_pad("sink"), record.get_static_pad("src")]
        for pad in pads[: args.probes]:
            assert pad is not None
            counter = Counter()
            counters.append(counter)
            pad.add_probe(Gst.PadProbeType.BUFFER, counter.probe)
        pipelines.append(pipeline)
    pending = set(range(len(pipelines)))

    def on_message(_bus: Gst.Bus, message: Gst.Message, index: int) -> None:
        if message.type == Gst.MessageType.EOS:
            pending.discard(index)
            if not pending:
                loop.quit()
        elif message.type == Gst.MessageType.ERROR:
            error, _debug = message.parse_error()
            print(f"pipeline {index}: {error.message}", file=sys.stderr)

    for index, pipeline in enumerate(pipelines):
        bus = pipeline.get_bus()
        assert bus is not None
        bus.add_signal_watch()
        bus.connect("message", on_message, index)
        pipeline.set_state(Gst.State.PLAYING)

    def stop(*_: Any) -> bool:
        for pipeline in pipelines:
            pipeline.send_event(Gst.Event.new_eos())
        GLib.timeout_add_seconds(15, give_up)
        return False

    def give_up() -> bool:
        loop.quit()
        return False

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, stop)
    GLib.timeout_add_seconds(int(args.max_seconds), stop)
    parent = os.getppid()

    def watch_parent() -> bool:  # the runner died: end with it
        if os.getppid() != parent:
            stop()
            return False
        return True

    GLib.timeout_add(500, watch_parent)
    print("READY " + json.dumps({"pipelines": len(pipelines)}), flush=True)
    loop.run()  # type: ignore[no-untyped-call]
    for pipeline in pipelines:
        pipeline.set_state(Gst.State.NULL)
    frames = sum(c.frames for c in counters)
    print("DONE " + json.dumps({"probe_calls": frames}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
