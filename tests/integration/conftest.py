"""What the engine integration tests share: a running engine and quick stream specs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamwarden.config import StreamSpec, parse_stream_spec
from streamwarden.engine import Engine
from streamwarden.state import StreamState
from tests.helpers import wait_until

# Recovery tuned for tests: retries within a second, a breaker that stays out of the way.
FAST: dict[str, Any] = {
    "backoff": {"initial_seconds": 0.2, "multiplier": 2, "max_seconds": 1.0, "jitter": "none"},
    "breaker": {"failure_threshold": 50, "open_seconds": 1},
    "stall_timeout_seconds": 2,
}


@pytest.fixture
def engine(gst_init: None) -> Iterator[Engine]:
    with Engine() as running:
        yield running


def file_spec(stream_id: str, path: Path, **extra: Any) -> StreamSpec:
    return parse_stream_spec(
        {"id": stream_id, "source": {"type": "file", "path": str(path)}, "recovery": FAST, **extra}
    )


def rtsp_spec(stream_id: str, uri: str, **source: Any) -> StreamSpec:
    return parse_stream_spec(
        {
            "id": stream_id,
            "source": {"type": "rtsp", "uri": uri, "connect_timeout_seconds": 3, **source},
            "recovery": FAST,
        }
    )


def wait_state(engine: Engine, stream_id: str, state: StreamState, timeout: float) -> None:
    wait_until(
        lambda: engine.state(stream_id) == state,
        timeout,
        message=f"{stream_id} not {state} within {timeout} s: {engine.info(stream_id)}",
    )
