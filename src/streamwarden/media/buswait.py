"""Bounded, non-spinning waits on a ``Gst.Bus`` whose poll may not exist.

A bus makes its ``GstPoll`` (a socket pair) when it is created. Out of file descriptors
(EMFILE) that fails with one GStreamer-CRITICAL, and the bus is left without a poll. Then
(GStreamer 1.22, gstbus.c): every ``timed_pop_filtered`` with a timeout fails an assertion
and returns at once, so a loop "waiting" on it spins and writes a CRITICAL per turn
(hundreds of MB of log in seconds); ``add_signal_watch`` silently installs nothing; and
``gst_bus_post`` *drops* every message after the sync handler, so popping without a
timeout (``pop_filtered`` in a sleep loop) would never see one either. The sync handler is
the only delivery left: ``BusWaiter`` uses it on such a bus, feeding a ``queue.Queue``
that is read with a timeout, so the wait is bounded and blocks instead of spinning.
"""

from __future__ import annotations

import queue
import time
from types import TracebackType
from typing import Self

from streamwarden.media.gst import Gst

__all__ = ["BusWaiter", "bus_can_wait"]

_SLICE = 0.1  # longest single blocking pop, so a deadline is never overshot by much


def bus_can_wait(bus: Gst.Bus) -> bool:
    """False when the bus has no poll (it was created out of descriptors).

    ``create_watch`` returns None for such a bus (after one CRITICAL line: there is no
    silent test). In 1.22 it also returns None, silently, when the bus already has a
    watch; callers then take the sync-handler path, which is correct too.
    """
    return bus.create_watch() is not None


class BusWaiter:
    """Takes messages of ``types`` from ``bus`` until a deadline; never spins (any thread).

    Create it before the messages can be posted (before PLAYING, before sending EOS): on a
    bus without a poll, messages posted before it exists are gone. Close it (or use it as a
    context manager) to remove its sync handler, which would otherwise keep it alive.
    """

    def __init__(self, bus: Gst.Bus, types: Gst.MessageType, *, can_wait: bool | None = None) -> None:
        self.bus = bus
        self.types = types
        self._queue: queue.Queue[Gst.Message] | None = None
        if not (bus_can_wait(bus) if can_wait is None else can_wait):
            self._use_sync_handler()

    @property
    def via_sync_handler(self) -> bool:
        return self._queue is not None

    def _use_sync_handler(self) -> None:
        messages: queue.Queue[Gst.Message] = queue.Queue()
        types = self.types

        def _deliver(_bus: Gst.Bus, message: Gst.Message) -> Gst.BusSyncReply:
            if message.type & types:
                messages.put(message)
            return Gst.BusSyncReply.PASS

        self._queue = messages
        self.bus.set_sync_handler(_deliver)

    def pop(self, deadline: float) -> Gst.Message | None:
        """The next matching message, or None once ``deadline`` (monotonic) has passed."""
        while True:
            remaining = deadline - time.monotonic()
            if self._queue is not None:
                try:
                    return self._queue.get(timeout=max(0.0, remaining))
                except queue.Empty:
                    return None
            if remaining <= 0:
                return self.bus.pop_filtered(self.types)
            asked = min(remaining, _SLICE)
            started = time.monotonic()
            message = self.bus.timed_pop_filtered(int(asked * Gst.SECOND), self.types)
            if message is not None:
                return message
            if asked >= 0.01 and time.monotonic() - started < asked / 4:
                self._use_sync_handler()  # returned at once: this bus cannot block after all

    def close(self) -> None:
        if self._queue is not None:
            self.bus.set_sync_handler(None)
            self._queue = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
