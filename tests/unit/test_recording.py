"""Recording policy without GStreamer: file templates, the segment index, retention, disk guard."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamwarden.config import ConfigError, parse_config
from streamwarden.recording.index import CloseReason, SegmentIndex, SegmentRecord
from streamwarden.recording.naming import (
    DEFAULT_FILE_TEMPLATE,
    final_path_for,
    parse_segment_name,
    render_template,
    unique_paths,
    validate_template,
)
from streamwarden.recording.retention import (
    DiskThreshold,
    FreeSpace,
    RetentionLimits,
    disk_verdict,
    plan_deletions,
)

START = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


# -- naming --------------------------------------------------------------------------------------------
def test_default_template_renders_utc_start_and_reads_back() -> None:
    rendered = render_template(DEFAULT_FILE_TEMPLATE, "cam1", START)
    assert rendered == "cam1/cam1-20250304T050607Z"
    for suffix, part in ((".mkv", False), (".part.mp4", True), ("-2.mkv", False), ("-1.part.mkv", True)):
        name = parse_segment_name(DEFAULT_FILE_TEMPLATE, "cam1", rendered + suffix)
        assert name is not None and name.part is part and name.start == START, suffix
    # Another stream's file, or a foreign file, is not ours.
    assert parse_segment_name(DEFAULT_FILE_TEMPLATE, "cam1", "cam10/cam10-20250304T050607Z.mkv") is None
    assert parse_segment_name(DEFAULT_FILE_TEMPLATE, "cam1", "cam1/notes.txt") is None
    assert parse_segment_name(DEFAULT_FILE_TEMPLATE, "cam1", "cam1/cam1-20250304T050607Z.mkv.remux") is None


def test_nested_template_with_date_directories() -> None:
    template = "%Y/%m/%d/{stream_id}/%H%M%S"
    rendered = render_template(template, "yard", START)
    assert rendered == "2025/03/04/yard/050607"
    name = parse_segment_name(template, "yard", rendered + ".mp4")
    assert name is not None and name.start == START and name.ext == "mp4"
    # A name without the full date does not pin the start: it is not read back as a time.
    partial = parse_segment_name("%Y/%m/{stream_id}-%H%M%S", "yard", "2025/03/yard-050607.mkv")
    assert partial is not None and partial.start is None


@pytest.mark.parametrize(
    "template",
    [
        "../{stream_id}-%Y",
        "/abs/{stream_id}",
        "{stream_id}/../../etc/x",
        "a/./{stream_id}",
        "a//{stream_id}",
        "%Y%m%d",  # no {stream_id}: streams sharing a directory would collide
        "{stream_id}-{other}",
        "{stream_id}-%Q",
        "{stream_id}\\x",
        ".hidden/{stream_id}",
        "{stream_id}.part",
        "",
    ],
)
def test_bad_templates_are_rejected(template: str) -> None:
    with pytest.raises(ValueError):
        validate_template(template)


def test_template_errors_name_the_field() -> None:
    record = {"dir": "r", "file_template": "../{stream_id}"}
    data = {"streams": [{"id": "c", "source": {"type": "file", "path": "x.mp4"}, "record": record}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.errors[0].startswith("streams[0].record.file_template:")


def test_recording_section_defaults_and_index_path_is_relative_to_the_config(tmp_path: Path) -> None:
    from streamwarden.config import load_config

    config_file = tmp_path / "c.yaml"
    config_file.write_text("recording: {index_path: idx/segments.db, max_total_bytes: 1000}\n")
    config = load_config(config_file)
    assert config.recording.index_path == str(tmp_path / "idx/segments.db")
    assert config.recording.min_free_bytes == 256 * 1024 * 1024
    assert parse_config({}).recording.index_path is None


def test_unique_paths_never_reuse_a_name(tmp_path: Path) -> None:
    part, final = unique_paths(tmp_path, "s/s-1", "mkv")
    assert (part.name, final.name) == ("s-1.part.mkv", "s-1.mkv")
    final.parent.mkdir()
    final.write_bytes(b"x")
    part2, final2 = unique_paths(tmp_path, "s/s-1", "mkv")
    assert final2.name == "s-1-1.mkv" and part2.name == "s-1-1.part.mkv"
    _part3, final3 = unique_paths(tmp_path, "s/s-1", "mkv", taken={str(final2)})
    assert final3.name == "s-1-2.mkv"
    leftover = final.with_name("s-1.part.mkv")
    assert final_path_for(leftover).name == "s-1-1.mkv"  # the final name exists: never overwrite


# -- index ---------------------------------------------------------------------------------------------
def _row(
    stream: str, start: float, duration: float = 10.0, size: int = 100, path: str | None = None
) -> SegmentRecord:
    return SegmentRecord(
        stream_id=stream,
        path=path or f"/r/{stream}/{start:.0f}.mkv",
        start_time=start,
        end_time=start + duration,
        duration=duration,
        bytes=size,
        frames=int(duration * 25),
        close_reason=str(CloseReason.ROTATION),
        format="mkv",
    )


def test_index_lists_a_time_range_and_reports_gaps(tmp_path: Path) -> None:
    index = SegmentIndex(tmp_path / "i.db")
    assert index.created
    for start in (0, 10, 20, 45, 55):
        index.add(_row("a", 1000 + start))
    index.add(_row("b", 1000))
    assert [s.start_time for s in index.segments("a", since=1015, until=1046)] == [1010, 1020, 1045]
    assert [s.start_time for s in index.segments("a", since=datetime.fromtimestamp(1050, UTC))] == [
        1045,
        1055,
    ]
    gaps = index.gaps("a")
    assert len(gaps) == 1 and gaps[0].seconds == 15 and gaps[0].start_time == 1030
    assert index.paths("b") == {"/r/b/1000.mkv"}
    # A reconcile never overrides a row the recorder wrote.
    assert not index.add(_row("a", 1000, duration=3), replace=False)
    assert index.segments("a")[0].duration == 10
    index.remove(["/r/a/1000.mkv"])
    assert len(index.segments("a")) == 4
    index.close()
    reopened = SegmentIndex(tmp_path / "i.db")
    assert not reopened.created and len(reopened.segments()) == 5
    mode = reopened._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    reopened.close()


def test_corrupt_index_is_set_aside_and_recreated(tmp_path: Path) -> None:
    path = tmp_path / "i.db"
    path.write_bytes(b"this is not a database" * 100)
    index = SegmentIndex(path)
    assert index.created and index.set_aside is not None and index.set_aside.exists()
    index.add(_row("a", 1))
    assert len(index.segments()) == 1
    index.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM segments").fetchone()[0] == 1


# -- retention -----------------------------------------------------------------------------------------
def test_retention_by_size_and_age_deletes_oldest_first() -> None:
    rows = [_row("a", t, size=100) for t in (0, 10, 20, 30)] + [_row("b", t, size=100) for t in (5, 15)]
    plan = plan_deletions(
        rows,
        now=100,
        per_stream={"a": RetentionLimits(max_total_bytes=250), "b": RetentionLimits(max_age_seconds=80)},
        global_limits=RetentionLimits(),
    )
    assert [(r.stream_id, r.start_time) for r, _why in plan] == [("a", 0), ("a", 10), ("b", 5)]
    assert "max_total_bytes" in plan[0][1] and "max_age_seconds" in plan[2][1]


def test_global_retention_spans_streams_and_spares_protected_files() -> None:
    rows = [_row("a", 0), _row("b", 10), _row("a", 20), _row("b", 30)]
    plan = plan_deletions(
        rows,
        now=100,
        per_stream={"a": RetentionLimits(), "b": RetentionLimits()},
        global_limits=RetentionLimits(max_total_bytes=200),
        protected={rows[0].path},
    )
    assert [r.start_time for r, _ in plan] == [10]  # the protected (open) oldest is never chosen
    assert plan_deletions(rows, now=100, per_stream={}, global_limits=RetentionLimits()) == []


def test_disk_guard_pauses_below_the_minimum_and_resumes_with_headroom() -> None:
    threshold = DiskThreshold(min_free_bytes=1000)
    assert disk_verdict(FreeSpace(1500, 10_000), threshold, paused=False) is None
    assert disk_verdict(FreeSpace(900, 10_000), threshold, paused=False) is not None
    assert disk_verdict(FreeSpace(1050, 10_000), threshold, paused=True) is not None  # hysteresis
    assert disk_verdict(FreeSpace(1200, 10_000), threshold, paused=True) is None
    percent = DiskThreshold(min_free_percent=10)
    assert "%" in (disk_verdict(FreeSpace(500, 10_000), percent, paused=False) or "")
    assert disk_verdict(FreeSpace(0, 10_000), DiskThreshold(), paused=False) is None  # guard off
