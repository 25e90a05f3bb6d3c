"""`streamwarden validate`: exit codes and messages an operator scripts against."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from streamwarden.cli import EXIT_CONFIG, app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "streamwarden.yaml"


def test_validate_accepts_the_issue_example() -> None:
    result = CliRunner().invoke(app, ["validate", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "2 stream(s)" in result.output
    assert "re-served on RTSP port 8554: cam1" in result.output
    assert "recorded: lobby" in result.output


def test_validate_lists_every_bad_field_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "streams:\n"
        "  - id: Bad Id\n"
        "    source: {type: rtsp, uri: 'rtsp://admin:topsecret@10.1.1.1:99999/x'}\n"
        "  - id: ok\n"
        "    source: {type: file, path: a.mp4}\n"
        "    record: {dir: r, format: avi}\n"
    )
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == EXIT_CONFIG
    assert "streams[0].id" in result.output and "'Bad Id'" in result.output
    assert "streams[0].source.uri" in result.output
    assert "streams[1].record.format" in result.output and "'avi'" in result.output
    assert "topsecret" not in result.output and "admin" not in result.output


def test_validate_missing_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "none.yaml")])
    assert result.exit_code == EXIT_CONFIG
    assert "cannot read" in result.output


def test_duplicate_keys_are_refused_by_validate_and_add(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("id: a\nsource: {type: file, path: a.mp4}\nid: b\n")
    result = CliRunner().invoke(app, ["validate", str(dup)])
    assert result.exit_code == EXIT_CONFIG
    assert "duplicate key 'id'" in result.output and "line 3" in result.output
    # `add` reads its file before it contacts any API: refused the same way, nothing sent.
    result = CliRunner().invoke(app, ["add", str(dup), "--url", "http://127.0.0.1:9"])
    assert result.exit_code == EXIT_CONFIG
    assert "duplicate key 'id'" in result.output
