"""The state file: atomic saves, secrets kept (mode 0600), corrupt files set aside and reported."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from streamwarden.config import RtspSource, parse_stream_spec
from streamwarden.persist import STATE_SUFFIX, PersistedStream, StateStore


def rtsp_stream(stream_id: str = "cam1") -> PersistedStream:
    spec = parse_stream_spec(
        {
            "id": stream_id,
            "source": {
                "type": "rtsp",
                "uri": "rtsp://admin:uri-secret@192.0.2.10/s",
                "username": "admin",
                "password": "field-secret",
                "transport": "udp",
            },
            "record": {"dir": "/rec", "format": "mp4", "segment_seconds": 10},
            "recovery": {"backoff": {"jitter": "none"}, "stall_timeout_seconds": 3},
        }
    )
    return PersistedStream(spec=spec)


def test_for_config_puts_the_state_next_to_the_config(tmp_path: Path) -> None:
    store = StateStore.for_config(tmp_path / "site.yaml")
    assert store.path == tmp_path / f"site.yaml{STATE_SUFFIX}"


def test_missing_file_is_no_state_and_no_problem(tmp_path: Path) -> None:
    result = StateStore(tmp_path / "none.state.json").load()
    assert result.streams is None and result.problem is None and result.set_aside is None


def test_round_trip_keeps_every_field_secrets_and_quarantine(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.state.json")
    quarantined = PersistedStream(
        spec=parse_stream_spec(
            {"id": "lobby", "source": {"type": "file", "path": "/a.mp4"}, "enabled": False}
        ),
        quarantined_until=1_900_000_000.5,
        quarantine_reason="network: refused",
    )
    store.save([rtsp_stream(), quarantined])
    result = store.load()
    assert result.problem is None and result.streams is not None
    cam, lobby = result.streams
    assert cam.spec == rtsp_stream().spec
    assert isinstance(cam.spec.source, RtspSource) and cam.spec.source.password is not None
    assert cam.spec.source.password.get_secret_value() == "field-secret"
    assert cam.spec.source.uri == "rtsp://admin:uri-secret@192.0.2.10/s"
    assert cam.quarantined_until is None
    assert lobby.spec.enabled is False
    assert lobby.quarantined_until == 1_900_000_000.5 and lobby.quarantine_reason == "network: refused"
    assert result.specs == [cam.spec, lobby.spec]


def test_file_is_private_and_no_temp_file_is_left(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.state.json")
    previous = os.umask(0o022)  # the usual umask would leave a new file world-readable
    try:
        store.save([rtsp_stream()])
        store.save([rtsp_stream(), rtsp_stream("cam2")])
    finally:
        os.umask(previous)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.state.json"]
    document = json.loads(store.path.read_text())
    assert document["version"] == 1 and [s["spec"]["id"] for s in document["streams"]] == ["cam1", "cam2"]


def test_a_failed_save_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path / "s.state.json")
    store.save([rtsp_stream()])
    before = store.path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        store.save([rtsp_stream("other")])
    assert store.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.state.json"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"version": 1, "streams": [', "invalid JSON"),
        (b"\xff\xfe garbage", "not UTF-8"),
        (b"[]", "not a JSON object"),
        (b'{"version": 99, "streams": []}', "unsupported version"),
        (b'{"version": 1, "streams": {}}', "'streams' is not a list"),
        (
            b'{"version": 1, "streams": [{"spec": {"id": "Bad Id", '
            b'"source": {"type": "file", "path": "x"}}}]}',
            "id",
        ),
        (
            b'{"version": 1, "streams": [{"spec": {"id": "a", "source": {"type": "file", "path": "x"}}},'
            b' {"spec": {"id": "a", "source": {"type": "file", "path": "y"}}}]}',
            "duplicate",
        ),
        (
            b'{"version": 1, "streams": [{"spec": {"id": "a", "source": {"type": "file", "path": "x"}},'
            b' "quarantine": {"until": "soon"}}]}',
            "quarantine.until",
        ),
        (
            b'{"version": 1, "streams": [{"spec": {"id": "a", "source": {"type": "file", "path": "x"}}, '
            b'"quarantine": {"until": NaN}}]}',
            "NaN",
        ),
    ],
)
def test_corrupt_file_is_set_aside_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, reason: str
) -> None:
    store = StateStore(tmp_path / "s.state.json")
    store.path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="streamwarden.persist"):
        result = store.load()
    assert result.streams is None
    assert result.problem is not None and reason in result.problem, result.problem
    assert result.set_aside is not None and result.set_aside.read_bytes() == content
    assert result.set_aside.name.startswith("s.state.json.corrupt-")
    assert not store.path.exists()
    assert any(
        "corrupt" in r.getMessage() and result.set_aside.name in r.getMessage() for r in caplog.records
    )


def test_two_corrupt_files_in_the_same_second_are_both_kept(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.state.json")
    aside = []
    for content in (b"{one", b"{two"):
        store.path.write_bytes(content)
        result = store.load()
        assert result.set_aside is not None
        aside.append(result.set_aside)
    assert aside[0] != aside[1]
    assert [p.read_bytes() for p in aside] == [b"{one", b"{two"]


def test_problem_with_a_credential_is_redacted(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.state.json")
    bad = {"id": "a", "source": {"type": "rtsp", "uri": "http://admin:leaked@192.0.2.1/x"}}
    store.path.write_text(json.dumps({"version": 1, "streams": [{"spec": bad}]}))
    result = store.load()
    assert result.problem is not None and "source.uri" in result.problem
    assert "leaked" not in result.problem


def test_saved_state_can_be_loaded_after_a_save_is_set_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.state.json")
    store.path.write_bytes(b"not json")
    assert store.load().set_aside is not None
    store.save([rtsp_stream()])
    result = store.load()
    assert result.streams is not None and [s.spec.id for s in result.streams] == ["cam1"]
