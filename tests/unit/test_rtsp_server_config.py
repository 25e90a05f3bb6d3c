"""The ``rtsp_server:`` block: defaults, limits, auth users and outage mode (no GStreamer)."""

from __future__ import annotations

import pytest

from streamwarden.config import ConfigError, OutageMode, RtspAuthMethod, parse_config


def test_defaults_serve_on_8554_without_auth_and_hold_during_outages() -> None:
    server = parse_config({}).rtsp_server
    assert (server.host, server.port) == ("0.0.0.0", 8554)
    assert server.users == [] and server.auth_method == RtspAuthMethod.DIGEST
    assert server.outage == OutageMode.HOLD
    assert server.max_clients >= server.max_clients_per_stream >= 1
    assert server.session_timeout_seconds == 60


def test_a_full_block_parses_and_keeps_passwords_secret() -> None:
    config = parse_config(
        {
            "rtsp_server": {
                "port": 0,
                "max_clients": 10,
                "max_clients_per_stream": 3,
                "session_timeout_seconds": 20,
                "outage": "slate",
                "outage_after_seconds": 1.5,
                "auth_method": "basic",
                "users": [{"username": "viewer", "password": "s3cret"}],
            }
        }
    )
    server = config.rtsp_server
    assert server.outage == OutageMode.SLATE and server.auth_method == RtspAuthMethod.BASIC
    assert server.users[0].password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(server) and "s3cret" not in str(config.model_dump())


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"max_clients": 0}, "rtsp_server.max_clients"),
        ({"max_clients_per_stream": -1}, "rtsp_server.max_clients_per_stream"),
        ({"session_timeout_seconds": 1}, "rtsp_server.session_timeout_seconds"),
        ({"outage": "freeze"}, "rtsp_server.outage"),
        ({"auth_method": "ntlm"}, "rtsp_server.auth_method"),
        ({"users": [{"username": "a:b", "password": "x"}]}, "rtsp_server.users[0].username"),
        ({"users": [{"username": "a"}]}, "rtsp_server.users[0].password"),
        ({"port": 70000}, "rtsp_server.port"),
        ({"max_client": 3}, "rtsp_server.max_client"),
    ],
)
def test_bad_values_name_their_field(block: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"rtsp_server": block})
    assert any(line.startswith(f"{field}:") for line in info.value.errors), info.value.errors
