"""Config contract: the issue's example validates; bad values name field and value, redacted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamwarden.config import (
    ConfigError,
    FileSource,
    RtspSource,
    load_config,
    load_yaml,
    parse_config,
    parse_stream_spec,
    redacted_spec,
    rtsp_credentials,
)
from streamwarden.policy.backoff import JitterMode
from streamwarden.redact import redact

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "streamwarden.yaml"


def test_issue_example_validates_as_written() -> None:
    config = load_config(EXAMPLE)
    assert [s.id for s in config.streams] == ["cam1", "lobby"]
    cam1, lobby = config.streams
    assert isinstance(cam1.source, RtspSource)
    assert cam1.source.transport == "auto"
    assert cam1.serve is True
    assert isinstance(lobby.source, FileSource)
    assert lobby.source.path == str(EXAMPLE.parent / "media/lobby.mp4")
    assert lobby.record is not None and lobby.record.format == "mkv" and lobby.record.segment_seconds == 60
    assert lobby.recovery.backoff.jitter == JitterMode.FULL
    assert lobby.recovery.breaker.failure_threshold == 5
    assert lobby.recovery.stall_timeout_seconds == 5
    assert config.api.port == 8080 and config.rtsp_server.port == 8554


def _errors(data: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.errors


@pytest.mark.parametrize("bad_id", ["Cam1", "-cam", "a" * 65, "../etc", "cam/1", "", "cam 1"])
def test_stream_id_pattern_is_enforced(bad_id: str) -> None:
    errors = _errors({"streams": [{"id": bad_id, "source": {"type": "file", "path": "x.mp4"}}]})
    assert len(errors) == 1
    assert errors[0].startswith("streams[0].id:")
    assert repr(bad_id) in errors[0]


def test_bad_values_name_field_and_value_with_credentials_redacted() -> None:
    errors = _errors(
        {
            "streams": [
                {
                    "id": "cam1",
                    "source": {"type": "rtsp", "uri": "http://bob:hunter2@10.0.0.1/x", "transport": "quic"},
                    "recovery": {"backoff": {"jitter": "sometimes", "initial_seconds": -1}},
                }
            ]
        }
    )
    joined = "\n".join(errors)
    assert "hunter2" not in joined and "bob" not in joined
    assert any(e.startswith("streams[0].source.uri:") and "***@10.0.0.1" in e for e in errors)
    assert any(e.startswith("streams[0].source.transport:") and "'quic'" in e for e in errors)
    assert any(e.startswith("streams[0].recovery.backoff.jitter:") and "'sometimes'" in e for e in errors)
    assert any(e.startswith("streams[0].recovery.backoff.initial_seconds:") for e in errors)


def test_unknown_keys_and_duplicates_are_errors() -> None:
    errors = _errors(
        {
            "streams": [
                {"id": "a", "source": {"type": "file", "path": "x.mp4"}, "recrod": {}},
                {"id": "b", "source": {"type": "ftp", "path": "x"}},
            ]
        }
    )
    assert any(e.startswith("streams[0].recrod:") for e in errors)
    assert any(e.startswith("streams[1].source:") and "ftp" in e for e in errors)
    dup = _errors({"streams": [{"id": "a", "source": {"type": "file", "path": "x"}}] * 2})
    assert dup == ["streams: duplicate stream id 'a'"]


def test_invalid_error_rule_is_reported() -> None:
    errors = _errors({"engine": {"error_rules": [{"name": "x", "category": "weather"}]}})
    assert errors[0].startswith("engine.error_rules:")


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("streams:\n  - id: a\n   source: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "invalid YAML: line" in caught.value.errors[0]


def test_duplicate_yaml_keys_are_errors_naming_key_and_line(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys silently: a second ``source:`` left by an edit
    would replace the first without a word."""
    path = tmp_path / "dup.yaml"
    path.write_text(
        "streams:\n"
        "  - id: a\n"
        "    source: {type: file, path: x.mp4}\n"
        "    source: {type: file, path: y.mp4, password: hunter2}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.errors == [
        "invalid YAML: line 4, column 5: duplicate key 'source' (first given on line 3)"
    ]
    path.write_text("engine: {}\nstreams: []\nengine: {}\n")  # at the top level too
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "duplicate key 'engine'" in caught.value.errors[0] and "line 3" in caught.value.errors[0]


def test_yaml_merge_keys_may_still_be_overridden() -> None:
    data = load_yaml("base: &b {stall_timeout_seconds: 2, x: 1}\nother:\n  <<: *b\n  x: 2\n")
    assert data["other"] == {"stall_timeout_seconds": 2, "x": 2}
    with pytest.raises(yaml.YAMLError, match="duplicate key 'x'"):
        load_yaml("a:\n  <<: {x: 1}\n  x: 2\n  x: 3\n")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read" in caught.value.errors[0]


def test_credentials_split_and_redacted_spec() -> None:
    spec = parse_stream_spec(
        {"id": "cam", "source": {"type": "rtsp", "uri": "rtsp://u:p%40ss@127.0.0.1:8554/x?y=1"}}
    )
    assert isinstance(spec.source, RtspSource)
    user, password, bare = rtsp_credentials(spec.source)
    assert (user, password, bare) == ("u", "p%40ss", "rtsp://127.0.0.1:8554/x?y=1")
    shown = redacted_spec(spec)
    assert "p%40ss" not in str(shown) and shown["source"]["uri"] == "rtsp://***@127.0.0.1:8554/x?y=1"
    field_spec = parse_stream_spec(
        {"id": "cam", "source": {"type": "rtsp", "uri": "rtsp://h/x", "username": "a", "password": "zz"}}
    )
    assert "zz" not in str(redacted_spec(field_spec))
    assert isinstance(field_spec.source, RtspSource)
    assert rtsp_credentials(field_spec.source)[:2] == ("a", "zz")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://admin:pw@10.0.0.5:554/s", "rtsp://***@10.0.0.5:554/s"),
        ("fail rtsp://admin@h/s and http://a:b@c/", "fail rtsp://***@h/s and http://***@c/"),
        ("user-pw=secret other=1", "user-pw=*** other=1"),
        ('password: "x y" next', "password: *** next"),
        ("no credentials rtsp://h/s", "no credentials rtsp://h/s"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_password_with_at_sign() -> None:
    assert redact("rtsp://u:p@ss@10.0.0.1/x") == "rtsp://***@10.0.0.1/x"


def test_secret_fields_and_schemeless_userinfo_are_never_echoed() -> None:
    errors = _errors(
        {
            "streams": [
                {"id": "a", "source": {"type": "rtsp", "uri": "rtsp://h/x", "password": 12345678}},
                {"id": "b", "source": {"type": "rtsp", "uri": "user:pw@h/x"}},
            ]
        }
    )
    joined = "\n".join(errors)
    assert "12345678" not in joined and "pw@" not in joined and "user" not in joined
    assert any(e.startswith("streams[0].source.password:") and "(got ***)" in e for e in errors)
    assert any(e.startswith("streams[1].source.uri:") and "***@h/x" in e for e in errors)


def test_breaker_cap_below_hold_is_a_config_error() -> None:
    errors = _errors(
        {
            "streams": [
                {
                    "id": "a",
                    "source": {"type": "file", "path": "x.mp4"},
                    "recovery": {"breaker": {"open_seconds": 60, "max_open_seconds": 10}},
                }
            ]
        }
    )
    assert errors == ["streams[0].recovery.breaker: max_open_seconds must be >= open_seconds"]
