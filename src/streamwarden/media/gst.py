"""GStreamer, initialised on import.

Defining a ``Gst.Bin`` subclass before ``Gst.init`` makes GStreamer abort while registering
its core elements, so every module that subclasses a Gst type imports ``Gst`` from here.
``Gst.init`` is idempotent; this is process set-up, not engine state.
"""

from __future__ import annotations

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GLib", "2.0")
from gi.repository import GLib, Gst  # noqa: E402

Gst.init(None)

__all__ = ["GLib", "Gst"]
