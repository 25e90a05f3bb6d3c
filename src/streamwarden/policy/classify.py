"""Error classification: turn what the media layer saw into a recovery action.

It is a rule table rather than if/else code so that operators can add rules from config for their
own cameras (extra rules are checked first), and so that every decision names the rule behind it.
Inputs are plain data (no Gst objects), so this module stays testable without GStreamer.
The built-in rules were checked against the messages GStreamer 1.22 really posts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

__all__ = [
    "CORE_ERROR",
    "DEFAULT_RULES",
    "LIBRARY_ERROR",
    "REPORT_KINDS",
    "RESOURCE_ERROR",
    "STREAM_ERROR",
    "Action",
    "Category",
    "Classification",
    "Classifier",
    "ErrorReport",
    "Rule",
    "Transience",
    "rtsp_status_from_text",
    "rule_from_mapping",
]

# GError domain strings exactly as GStreamer reports them (g_quark_to_string of the error domain).
RESOURCE_ERROR = "gst-resource-error-quark"
STREAM_ERROR = "gst-stream-error-quark"
CORE_ERROR = "gst-core-error-quark"
LIBRARY_ERROR = "gst-library-error-quark"

# The values ErrorReport.kind may take; config rules are checked against this to catch typos.
REPORT_KINDS = frozenset({"error", "warning", "eos", "stall", "timeout", "internal", "element"})


class Category(StrEnum):
    """What failed, for dashboards and metrics labels."""

    NETWORK = "network"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    PROTOCOL = "protocol"
    DECODE = "decode"
    RESOURCE = "resource"
    PIPELINE = "pipeline"
    INTERNAL = "internal"


class Transience(StrEnum):
    """How likely the problem is to go away by itself."""

    TRANSIENT = "transient"  # usually fixes itself within seconds
    RECOVERABLE = "recoverable"  # needs something outside to change (credentials, a file, a camera setting)
    FATAL = "fatal"  # retrying cannot help until the installation changes


class Action(StrEnum):
    """What the supervisor should do about it."""

    IGNORE = "ignore"  # log & count, stream keeps running (e.g. a few undecodable frames)
    RETRY_NOW = "retry_now"
    BACKOFF = "backoff"
    SLOW_RETRY = "slow_retry"  # backoff starting at the cap
    SWITCH_TRANSPORT = "switch_transport"
    QUARANTINE = "quarantine"
    STOP = "stop"


@dataclass(frozen=True)
class ErrorReport:
    """What the media layer observed; plain data, no Gst objects."""

    kind: str  # "error" | "warning" | "eos" | "stall" | "timeout" | "internal" | "element"
    domain: str = ""  # GError domain string as GStreamer gives it, e.g. "gst-resource-error-quark"
    code: int = 0
    element: str = ""  # element name/factory, e.g. "rtspsrc", "filesrc", "qtdemux"
    message: str = ""
    debug: str = ""
    rtsp_status: int | None = None


@dataclass(frozen=True)
class Classification:
    """The verdict for one report, with the rule that produced it for logs and the API."""

    category: Category
    transience: Transience
    action: Action
    reason: str
    rule: str  # name of the matching rule


@dataclass(frozen=True)
class Rule:
    """One row of the table. Every field that is not None must match; the first matching rule wins."""

    name: str
    category: Category
    transience: Transience
    action: Action
    kind: str | None = None
    domain: str | None = None
    code: int | None = None
    element: str | None = None  # regex matched against element (re.search)
    message: str | None = None  # regex (case-insensitive) matched against message + "\n" + debug
    rtsp_status: int | None = None  # matched against report.rtsp_status, else the status found in the text
    reason: str | None = None  # human text; default: the report's message, else the rule name

    def __post_init__(self) -> None:
        # Accept plain strings (as from config) and fail early on bad regexes, naming the field.
        object.__setattr__(self, "category", Category(self.category))
        object.__setattr__(self, "transience", Transience(self.transience))
        object.__setattr__(self, "action", Action(self.action))
        for field_name, pattern in (("element", self.element), ("message", self.message)):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(
                        f"rule {self.name!r}: field {field_name!r}: invalid regex {pattern!r}: {exc}"
                    ) from exc


# Status codes as rtspsrc and friends print them, most specific first:
#   "RTSP/1.0 454 Session Not Found", "Not Found (404)" (rtspsrc's debug text),
#   "Got error response: 401 (Unauthorized).", "status code 503".
# The "(NNN)" form needs whitespace before it so source locations like "gstfilesrc.c(553)" never match.
_STATUS_PATTERNS = (
    re.compile(r"\b(?:RTSP|HTTP)/\d(?:\.\d)?\s+([1-5]\d\d)\b", re.IGNORECASE),
    re.compile(r"(?:^|\s)\(([1-5]\d\d)\)"),
    re.compile(r"\b(?:response|status)(?:\s+code)?\s*:?\s*([1-5]\d\d)\b", re.IGNORECASE),
)


def rtsp_status_from_text(text: str) -> int | None:
    """Extract an RTSP/HTTP status code from GStreamer message/debug text, or None.

    rtspsrc only maps 401 and 404 to their own GError codes; every other status (403, 454, 461,
    503, ...) arrives as a generic read error whose debug text holds the code, so we parse it.
    """
    for pattern in _STATUS_PATTERNS:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None


_N, _A, _NF, _P = Category.NETWORK, Category.AUTH, Category.NOT_FOUND, Category.PROTOCOL
_D, _R, _PL = Category.DECODE, Category.RESOURCE, Category.PIPELINE
_T, _REC, _F = Transience.TRANSIENT, Transience.RECOVERABLE, Transience.FATAL

_AUTH_REASON = "authentication failed (check credentials)"
_FORBIDDEN_REASON = "access forbidden (check credentials and permissions)"
_TRANSPORT_REASON = "no usable RTSP transport (switching transport)"
_SESSION_REASON = "RTSP session not found (server dropped the session)"
_UNAVAILABLE_REASON = "server unavailable (503)"
_TIMEOUT_REASON = "timed out waiting for the source"
_DEMUX_REASON = "invalid or unplayable media (the file may be replaced)"
_CODEC_REASON = "unsupported codec or format (the camera may be reconfigured)"
_DATAFLOW_REASON = "internal data flow error in the pipeline"

# Order matters: kind-specific rows, then warnings, then text/status rows (more specific than the
# GError code, which rtspsrc reuses for many statuses), then GError domain/code rows.
DEFAULT_RULES: tuple[Rule, ...] = (
    # -- things our own engine detects --
    Rule("internal", Category.INTERNAL, _REC, Action.BACKOFF, kind="internal",
         reason="exception in streamwarden's own code"),
    Rule("stall", _N, _T, Action.BACKOFF, kind="stall", reason="no frame for longer than the stall timeout"),
    Rule("timeout", _N, _T, Action.BACKOFF, kind="timeout", reason=_TIMEOUT_REASON),
    Rule("rtspsrc_timeout", _N, _T, Action.BACKOFF, kind="element", message=r"GstRTSPSrcTimeout",
         reason=_TIMEOUT_REASON),
    Rule("eos", _N, _T, Action.BACKOFF, kind="eos",
         reason="source ended (EOS on a live source is a disconnect)"),
    # Out of descriptors, whichever element or bus met it first; before the GError-code rows,
    # which would call filesrc's EMFILE "cannot open the source" and rtspsrc's a network error.
    Rule("out_of_descriptors", _R, _T, Action.BACKOFF, kind="error",
         message=r"too many open files|\bE[MN]FILE\b",
         reason="too many open files (the process ran out of file descriptors)"),
    # -- warnings that matter (all other warnings fall back to IGNORE) --
    Rule("udp_fallback_to_tcp", _N, _T, Action.IGNORE, kind="warning",
         message=r"Could not receive any UDP packets", reason="no UDP packets; rtspsrc retries over TCP"),
    Rule("server_closed", _N, _T, Action.BACKOFF, message=r"server closed the connection",
         reason="server closed the connection"),
    Rule("decode_warning", _D, _T, Action.IGNORE, kind="warning", domain=STREAM_ERROR, code=7,
         reason="some frames could not be decoded"),
    # -- RTSP statuses and well-known texts --
    Rule("no_supported_stream", _P, _REC, Action.SWITCH_TRANSPORT, kind="error",
         message=r"No supported stream was found", reason=_TRANSPORT_REASON),
    Rule("unsupported_transport", _P, _REC, Action.SWITCH_TRANSPORT, kind="error", rtsp_status=461,
         reason=_TRANSPORT_REASON),
    Rule("unsupported_transport_text", _P, _REC, Action.SWITCH_TRANSPORT, kind="error",
         message=r"Unsupported transport", reason=_TRANSPORT_REASON),
    Rule("unauthorized", _A, _REC, Action.SLOW_RETRY, kind="error", rtsp_status=401, reason=_AUTH_REASON),
    Rule("forbidden", _A, _REC, Action.SLOW_RETRY, kind="error", rtsp_status=403, reason=_FORBIDDEN_REASON),
    Rule("forbidden_text", _A, _REC, Action.SLOW_RETRY, kind="error", message=r"\bForbidden\b",
         reason=_FORBIDDEN_REASON),
    Rule("session_not_found", _P, _T, Action.BACKOFF, kind="error", rtsp_status=454, reason=_SESSION_REASON),
    Rule("session_not_found_text", _P, _T, Action.BACKOFF, kind="error", message=r"Session Not Found",
         reason=_SESSION_REASON),
    Rule("stream_not_found", _NF, _REC, Action.BACKOFF, kind="error", rtsp_status=404,
         reason="stream not found on the server (404)"),
    Rule("service_unavailable", _N, _T, Action.BACKOFF, kind="error", rtsp_status=503,
         reason=_UNAVAILABLE_REASON),
    Rule("service_unavailable_text", _N, _T, Action.BACKOFF, kind="error", message=r"Service Unavailable",
         reason=_UNAVAILABLE_REASON),
    Rule("resolve_failed", _N, _T, Action.BACKOFF, kind="error", message=r"Could not resolve",
         reason="could not resolve server name"),
    # curlhttpsrc reports a failed transfer (refused, reset, timed out, TLS) only as a
    # data-flow error; HTTP statuses come as their own errors ("File not found").
    Rule("http_transfer_failed", _N, _T, Action.BACKOFF, kind="error", element=r"curlhttpsrc",
         message=r"Internal data stream error",
         reason="HTTP transfer failed (connection refused, reset or timed out)"),
    Rule("no_playable_streams", _D, _REC, Action.BACKOFF, kind="error",
         message=r"contains no playable streams", reason=_DEMUX_REASON),
    Rule("internal_data_flow", _PL, _REC, Action.BACKOFF, kind="error",
         message=r"Internal data stream error", reason=_DATAFLOW_REASON),
    # -- GStreamer resource errors --
    Rule("not_authorized", _A, _REC, Action.SLOW_RETRY, kind="error", domain=RESOURCE_ERROR, code=15,
         reason=_AUTH_REASON),
    Rule("resource_not_found", _NF, _REC, Action.BACKOFF, kind="error", domain=RESOURCE_ERROR, code=3,
         reason="resource not found (it may come back)"),
    Rule("connect_failed", _N, _T, Action.BACKOFF, kind="error", domain=RESOURCE_ERROR, code=7,
         reason="could not connect to the source"),
    Rule("read_failed", _N, _T, Action.BACKOFF, kind="error", domain=RESOURCE_ERROR, code=9,
         reason="could not read from the source (connection lost)"),
    Rule("open_read_failed", _R, _REC, Action.BACKOFF, kind="error", domain=RESOURCE_ERROR, code=5,
         reason="could not open the source for reading"),
    Rule("resource_busy", _R, _T, Action.BACKOFF, kind="error", domain=RESOURCE_ERROR, code=4,
         reason="resource busy"),
    Rule("open_write_failed", _R, _REC, Action.BACKOFF, kind="error", domain=RESOURCE_ERROR, code=6,
         reason="could not open output for writing"),
    Rule("write_failed", _R, _REC, Action.BACKOFF, kind="error", domain=RESOURCE_ERROR, code=10,
         reason="could not write output"),
    Rule("no_space_left", _R, _REC, Action.BACKOFF, kind="error", domain=RESOURCE_ERROR, code=14,
         reason="no space left on device"),
    # -- GStreamer stream errors --
    Rule("demux_failed", _D, _REC, Action.BACKOFF, kind="error", domain=STREAM_ERROR, code=9,
         reason=_DEMUX_REASON),
    Rule("format_error", _D, _REC, Action.BACKOFF, kind="error", domain=STREAM_ERROR, code=11,
         reason="stream format error"),
    Rule("decode_failed", _D, _REC, Action.BACKOFF, kind="error", domain=STREAM_ERROR, code=7,
         reason="decoding failed"),
    Rule("type_not_found", _PL, _REC, Action.SLOW_RETRY, kind="error", domain=STREAM_ERROR, code=4,
         reason=_CODEC_REASON),
    Rule("wrong_type", _PL, _REC, Action.SLOW_RETRY, kind="error", domain=STREAM_ERROR, code=5,
         reason=_CODEC_REASON),
    Rule("codec_not_found", _PL, _REC, Action.SLOW_RETRY, kind="error", domain=STREAM_ERROR, code=6,
         reason=_CODEC_REASON),
    # -- GStreamer core errors --
    Rule("missing_plugin", _PL, _F, Action.STOP, kind="error", domain=CORE_ERROR, code=10,
         reason="a GStreamer plugin is missing (install it)"),
    Rule("negotiation_failed", _PL, _REC, Action.SLOW_RETRY, kind="error", domain=CORE_ERROR, code=7,
         reason=_CODEC_REASON),
    Rule("pad_error", _PL, _REC, Action.BACKOFF, kind="error", domain=CORE_ERROR, code=4,
         reason=_DATAFLOW_REASON),
)  # fmt: skip


@dataclass(frozen=True)
class _Compiled:
    rule: Rule
    element: re.Pattern[str] | None
    message: re.Pattern[str] | None

    def matches(self, report: ErrorReport, text: str, status: int | None) -> bool:
        r = self.rule
        return (
            (r.kind is None or r.kind == report.kind)
            and (r.domain is None or r.domain == report.domain)
            and (r.code is None or r.code == report.code)
            and (r.rtsp_status is None or r.rtsp_status == status)
            and (self.element is None or self.element.search(report.element) is not None)
            and (self.message is None or self.message.search(text) is not None)
        )


class Classifier:
    """Classifies reports with ``extra_rules`` (checked first) followed by ``DEFAULT_RULES``."""

    def __init__(self, extra_rules: Sequence[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = (*extra_rules, *DEFAULT_RULES)
        self._compiled = tuple(
            _Compiled(
                rule,
                re.compile(rule.element) if rule.element is not None else None,
                re.compile(rule.message, re.IGNORECASE) if rule.message is not None else None,
            )
            for rule in self.rules
        )

    def classify(self, report: ErrorReport) -> Classification:
        """Return the verdict of the first matching rule, or a conservative fallback."""
        text = f"{report.message}\n{report.debug}"
        status = report.rtsp_status if report.rtsp_status is not None else rtsp_status_from_text(text)
        for compiled in self._compiled:
            if compiled.matches(report, text, status):
                rule = compiled.rule
                reason = rule.reason or report.message.strip() or rule.name.replace("_", " ")
                return Classification(rule.category, rule.transience, rule.action, reason, rule.name)
        reason = report.message.strip() or f"unclassified {report.kind}"
        if report.kind == "warning":
            # GStreamer warns about many harmless things; restarting on them would cause outages.
            return Classification(_PL, _T, Action.IGNORE, reason, "fallback_warning")
        # Unknown failures: assume the pipeline is broken but may recover, and retry politely.
        return Classification(_PL, _REC, Action.BACKOFF, reason, "fallback")


_E = TypeVar("_E", Category, Transience, Action)


def _required_enum(data: Mapping[str, object], field: str, enum: type[_E], label: str) -> _E:
    value = data.get(field)
    if value is None:
        raise ValueError(f"{label}: field {field!r} is required")
    allowed = ", ".join(member.value for member in enum)
    if not isinstance(value, str):
        raise ValueError(f"{label}: field {field!r} must be one of: {allowed}; got {value!r}")
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{label}: field {field!r} must be one of: {allowed}; got {value!r}") from None


def _optional_str(data: Mapping[str, object], field: str, label: str) -> str | None:
    value = data.get(field)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{label}: field {field!r} must be a string; got {value!r}")
    return value


def _optional_int(data: Mapping[str, object], field: str, label: str) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):  # bool is an int subclass; YAML yes/no
        raise ValueError(f"{label}: field {field!r} must be an integer; got {value!r}")
    return value


def rule_from_mapping(data: Mapping[str, object]) -> Rule:
    """Build a Rule from a config mapping, raising ValueError that names the offending field."""
    allowed_fields = {f.name for f in dataclasses.fields(Rule)}
    unknown = sorted(repr(key) for key in data if key not in allowed_fields)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"rule: field 'name' must be a non-empty string; got {name!r}")
    label = f"rule {name!r}"
    if unknown:
        raise ValueError(f"{label}: unknown field(s) {', '.join(unknown)}")
    kind = _optional_str(data, "kind", label)
    if kind is not None and kind not in REPORT_KINDS:
        raise ValueError(
            f"{label}: field 'kind' must be one of: {', '.join(sorted(REPORT_KINDS))}; got {kind!r}"
        )
    rtsp_status = _optional_int(data, "rtsp_status", label)
    if rtsp_status is not None and not 100 <= rtsp_status <= 599:
        raise ValueError(f"{label}: field 'rtsp_status' must be between 100 and 599; got {rtsp_status}")
    # Rule.__post_init__ validates the regexes and names the field.
    return Rule(
        name=name,
        category=_required_enum(data, "category", Category, label),
        transience=_required_enum(data, "transience", Transience, label),
        action=_required_enum(data, "action", Action, label),
        kind=kind,
        domain=_optional_str(data, "domain", label),
        code=_optional_int(data, "code", label),
        element=_optional_str(data, "element", label),
        message=_optional_str(data, "message", label),
        rtsp_status=rtsp_status,
        reason=_optional_str(data, "reason", label),
    )
