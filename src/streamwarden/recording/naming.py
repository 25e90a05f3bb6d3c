"""Segment file names: the operator's template, the in-progress suffix, and reading them back.

A template is strftime-style (the segment's UTC start time) plus ``{stream_id}``, relative to
the record directory, without extension: ``{stream_id}/{stream_id}-%Y%m%dT%H%M%SZ`` gives
``<dir>/cam1/cam1-20250101T120000Z.mkv``. A segment being written is named
``<name>.part.<ext>`` and renamed atomically when it is closed, so a ``.part`` file on disk is
always either open right now or a leftover from a crash. The same template, turned into a
regular expression, finds a stream's files again when the index is rebuilt.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "DEFAULT_FILE_TEMPLATE",
    "EXTENSIONS",
    "PART_MARK",
    "SegmentName",
    "final_path_for",
    "parse_segment_name",
    "render_template",
    "template_regex",
    "unique_paths",
    "validate_template",
]

DEFAULT_FILE_TEMPLATE = "{stream_id}/{stream_id}-%Y%m%dT%H%M%SZ"
PART_MARK = ".part"
EXTENSIONS = ("mkv", "mp4")
_PLACEHOLDER = "{stream_id}"
# strftime directives a template may use, with what each renders to (for reading names back).
_DIRECTIVES = {
    "Y": r"\d{4}",
    "G": r"\d{4}",
    "y": r"\d{2}",
    "m": r"\d{2}",
    "d": r"\d{2}",
    "H": r"\d{2}",
    "I": r"\d{2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "U": r"\d{2}",
    "W": r"\d{2}",
    "V": r"\d{2}",
    "j": r"\d{3}",
    "f": r"\d{6}",
    "u": r"\d",
    "w": r"\d",
    "a": r"[A-Za-z]+",
    "A": r"[A-Za-z]+",
    "b": r"[A-Za-z]+",
    "B": r"[A-Za-z]+",
    "p": r"[A-Za-z]+",
    "Z": r"[A-Za-z]+",
    "z": r"[+-]\d{4}",
    "%": r"%",
}
_SAMPLE_TIME = datetime(2001, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
_SAMPLE_ID = "sample-stream"


def validate_template(template: str) -> str:
    """Reject templates that could write outside the record directory or collide across streams."""
    if not template or template != template.strip():
        raise ValueError("must be a non-empty relative path without surrounding spaces")
    if "\\" in template or "\x00" in template:
        raise ValueError("must use '/' as separator and contain no NUL")
    if template.startswith("/") or re.match(r"^[A-Za-z]:", template):
        raise ValueError("must be relative to record.dir (no absolute path)")
    if _PLACEHOLDER not in template:
        raise ValueError("must contain {stream_id} (streams may share a directory)")
    if re.search(r"[{}]", template.replace(_PLACEHOLDER, "")):
        raise ValueError("only the placeholder {stream_id} is allowed")
    for match in re.finditer(r"%(.?)", template.replace("%%", "")):
        if match.group(1) not in _DIRECTIVES:
            raise ValueError(f"unsupported strftime directive %{match.group(1)}")
    for part in template.split("/"):
        if part in ("", ".", ".."):
            raise ValueError("no empty, '.' or '..' path components (must stay inside record.dir)")
    rendered = render_template(template, _SAMPLE_ID, _SAMPLE_TIME)
    normal = posixpath.normpath(rendered)
    if normal.startswith("..") or posixpath.isabs(normal) or normal != rendered:
        raise ValueError("renders to a path outside record.dir")
    if rendered.endswith(PART_MARK) or "/." in f"/{rendered}":
        raise ValueError("file and directory names must not start with '.' or end with '.part'")
    return template


def render_template(template: str, stream_id: str, start: datetime) -> str:
    """The relative path (no extension) of a segment starting at ``start`` (converted to UTC)."""
    # Stream ids are [a-z0-9_-]: they cannot inject strftime directives.
    return start.astimezone(UTC).strftime(template.replace(_PLACEHOLDER, stream_id))


def template_regex(template: str, stream_id: str) -> re.Pattern[str]:
    """Matches the relative path of any segment of ``stream_id`` (final, duplicate or part)."""
    out = []
    index = 0
    while index < len(template):
        if template.startswith(_PLACEHOLDER, index):
            out.append(re.escape(stream_id))
            index += len(_PLACEHOLDER)
        elif template[index] == "%" and index + 1 < len(template):
            out.append(_DIRECTIVES.get(template[index + 1], ".+?"))
            index += 2
        else:
            out.append(re.escape(template[index]))
            index += 1
    stem = "".join(out)
    exts = "|".join(EXTENSIONS)
    return re.compile(rf"^(?P<stem>{stem})(?P<dup>(?:-\d+)*)(?P<part>\.part)?\.(?P<ext>{exts})$")


@dataclass(frozen=True)
class SegmentName:
    """What a file name says about its segment."""

    stem: str
    ext: str
    part: bool
    start: datetime | None  # None when the template has no full date and time


def parse_segment_name(template: str, stream_id: str, relative: str) -> SegmentName | None:
    """Read a relative path back; None when it is not one of this stream's segments."""
    match = template_regex(template, stream_id).match(relative)
    if match is None:
        return None
    stem = match.group("stem")
    start: datetime | None = None
    if not _names_full_time(template):
        return SegmentName(
            stem=stem, ext=match.group("ext"), part=match.group("part") is not None, start=None
        )
    try:
        parsed = datetime.strptime(stem, template.replace(_PLACEHOLDER, stream_id))
    except ValueError:
        parsed = None
    if parsed is not None and parsed.year > 1900:
        start = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return SegmentName(stem=stem, ext=match.group("ext"), part=match.group("part") is not None, start=start)


def _names_full_time(template: str) -> bool:
    """True when the name pins the start to the second (else it is not read back as a time)."""
    codes = set(re.findall(r"%(.)", template.replace("%%", "")))
    has_day = {"m", "d"} <= codes or "j" in codes
    return "Y" in codes and has_day and {"H", "M", "S"} <= codes


def unique_paths(
    directory: Path, relative_stem: str, ext: str, taken: Collection[str] = ()
) -> tuple[Path, Path]:
    """(part path, final path) for a new segment; neither name is on disk or in ``taken``."""
    index = 0
    while True:
        stem = relative_stem if index == 0 else f"{relative_stem}-{index}"
        final = directory / f"{stem}.{ext}"
        part = directory / f"{stem}{PART_MARK}.{ext}"
        if str(final) not in taken and str(part) not in taken and not final.exists() and not part.exists():
            return part, final
        index += 1


def final_path_for(part: Path) -> Path:
    """``x.part.mkv`` -> ``x.mkv`` (or ``x-N.mkv`` when that name is taken: never overwrite)."""
    name = part.name
    ext = part.suffix  # ".mkv"
    stem = name[: -len(ext)]
    stem = stem.removesuffix(PART_MARK)
    candidate = part.with_name(f"{stem}{ext}")
    index = 1
    while candidate.exists():
        candidate = part.with_name(f"{stem}-{index}{ext}")
        index += 1
    return candidate
