"""The engine's GLib main loop, on a thread and a MainContext of its own.

Every GStreamer state change, bus watch and timer of an engine runs here. A private
MainContext (not the process-wide default) is what lets two engines live in one process:
each thread pushes its context as thread-default, so bus watches added from it attach
to it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import gi

gi.require_version("GLib", "2.0")
from gi.repository import GLib  # noqa: E402

T = TypeVar("T")
log = logging.getLogger(__name__)


class LoopThread:
    """Owns a GLib MainContext + MainLoop running on a dedicated thread."""

    def __init__(self, name: str = "streamwarden-glib") -> None:
        self.context = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self.context, False)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        self.context.push_thread_default()
        try:
            self._started.set()
            self._loop.run()
        finally:
            self.context.pop_thread_default()

    def start(self) -> None:
        self._thread.start()
        self._started.wait(5.0)

    def stop(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        self.schedule(self._loop.quit)
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def schedule(self, func: Callable[[], object]) -> None:
        """Run ``func`` soon on the loop thread. Safe from any thread."""

        def _once() -> bool:
            try:
                func()
            except Exception:
                log.exception("unhandled exception in a scheduled loop callback")
            return GLib.SOURCE_REMOVE

        source = GLib.idle_source_new()
        source.set_priority(GLib.PRIORITY_DEFAULT)
        source.set_callback(lambda *_: _once())
        source.attach(self.context)

    def call(self, func: Callable[[], T]) -> Future[T]:
        """Run ``func`` on the loop thread; the future carries its result or exception."""
        future: Future[T] = Future()
        if self.in_loop():
            _complete(future, func)
            return future
        self.schedule(lambda: _complete(future, func))
        return future

    def call_sync(self, func: Callable[[], T], timeout: float = 10.0) -> T:
        return self.call(func).result(timeout)

    def timeout(self, seconds: float, func: Callable[[], bool]) -> GLib.Source:
        """Call ``func`` after ``seconds`` on the loop, again while it returns True."""

        def _tick(*_: object) -> bool:
            try:
                return bool(func())
            except Exception:
                log.exception("unhandled exception in a loop timer")
                return GLib.SOURCE_REMOVE

        source = GLib.timeout_source_new(max(0, int(seconds * 1000)))
        source.set_callback(_tick)
        source.attach(self.context)
        return source


def _complete(future: Future[T], func: Callable[[], T]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(func())
    except BaseException as exc:
        future.set_exception(exc)
