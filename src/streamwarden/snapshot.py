"""One stream at one instant, as the control plane reads it (kept free of GStreamer imports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamwarden.config import StreamSpec


@dataclass(frozen=True)
class StreamDetail:
    """One stream at one instant: ``Engine.info`` plus what info leaves out."""

    info: dict[str, Any]  # exactly Engine.info(id): spec redacted
    spec: StreamSpec  # unredacted: for the state file only, never for output
    errors_by_key: dict[tuple[str, str], int] = field(default_factory=dict)  # (category, transience)

    @property
    def id(self) -> str:
        return str(self.info["id"])
