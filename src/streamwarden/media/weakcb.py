"""Callbacks handed to GStreamer (pad probes, signal handlers) that do not keep anything alive.

A probe or handler on a child element whose closure holds a bound method of one of our
``Gst.Bin`` subclasses, or bookkeeping that holds elements (a file pass's reader and demuxer),
closes a reference cycle through C: closure -> Python object -> element -> pad -> closure.
Python's collector cannot see the C part, so those elements lived for ever once their pipeline
(or their pass over the file) was thrown away: ~50 KB per attempt, found by the churn of
``streamwarden chaos``. The wrapper of a Python subclass stays alive by itself as long as
GStreamer holds the object (PyGObject's toggle reference), and the bookkeeping is held by its
owner while it is current, so weak references are enough.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["weak_callback"]


def _weak(value: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(value)
    except TypeError:  # ints, strings, None: nothing to keep alive
        return lambda: value


def weak_callback(method: Callable[..., Any], *data: Any, dead: Any = None) -> Callable[..., Any]:
    """``method(*args, *data)`` with ``method``'s owner and each of ``data`` held weakly.

    Once any of them is gone the callback does nothing and returns ``dead`` (for a probe, what a
    probe of a torn-down element should return, e.g. ``Gst.PadProbeReturn.DROP``).
    """
    owner = weakref.WeakMethod(method)  # type: ignore[arg-type]
    refs = [_weak(item) for item in data]
    weak = [isinstance(ref, weakref.ref) for ref in refs]
    del data  # the closure must not hold them

    def call(*args: Any) -> Any:
        bound = owner()
        if bound is None:
            return dead
        values = [ref() for ref in refs]
        if any(is_weak and value is None for value, is_weak in zip(values, weak, strict=True)):
            return dead
        return bound(*args, *values)

    return call
