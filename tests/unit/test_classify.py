"""Classifier: a table of real GStreamer 1.22 messages, status parsing, config rules, fallbacks."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from streamwarden.policy import (
    DEFAULT_RULES,
    Action,
    Category,
    Classification,
    Classifier,
    ErrorReport,
    Rule,
    Transience,
    rtsp_status_from_text,
    rule_from_mapping,
)
from streamwarden.policy.classify import CORE_ERROR, RESOURCE_ERROR, STREAM_ERROR

N, A, NF, P = Category.NETWORK, Category.AUTH, Category.NOT_FOUND, Category.PROTOCOL
D, R, PL, INT = Category.DECODE, Category.RESOURCE, Category.PIPELINE, Category.INTERNAL
T, REC, F = Transience.TRANSIENT, Transience.RECOVERABLE, Transience.FATAL


def err(domain: str, code: int, message: str = "", debug: str = "", element: str = "rtspsrc0") -> ErrorReport:
    return ErrorReport("error", domain, code, element, message, debug)


def warn(
    domain: str, code: int, message: str = "", debug: str = "", element: str = "rtspsrc0"
) -> ErrorReport:
    return ErrorReport("warning", domain, code, element, message, debug)


@dataclass(frozen=True)
class Case:
    id: str
    report: ErrorReport
    category: Category
    transience: Transience
    action: Action


# Messages marked (real) were captured from GStreamer 1.22 on Debian 12 (rtspsrc against
# gst-rtsp-server, filesrc, qtdemux); the others follow the GStreamer sources.
CASES = [
    Case(
        "rtsp connection refused",
        err(RESOURCE_ERROR, 7, "Could not open resource for reading and writing.",
            "../gst/rtsp/gstrtspsrc.c(8336): gst_rtspsrc_retrieve_sdp (): "
            "/GstPipeline:pipeline0/GstRTSPSrc:rtspsrc0:\nFailed to connect. (Connection refused)"),
        N, T, Action.BACKOFF,
    ),
    Case(
        "rtsp connect generic error (real)",
        err(RESOURCE_ERROR, 7, "Could not open resource for reading and writing.",
            "../gst/rtsp/gstrtspsrc.c(8336): gst_rtspsrc_retrieve_sdp (): "
            "/GstPipeline:pipeline0/GstRTSPSrc:rtspsrc0:\nFailed to connect. (Generic error)"),
        N, T, Action.BACKOFF,
    ),
    Case(
        "server died: warning (real)",
        warn(RESOURCE_ERROR, 9, "Could not read from resource.",
             "../gst/rtsp/gstrtspsrc.c(5885): gst_rtspsrc_loop_interleaved (): "
             "/GstPipeline:pipeline0/GstRTSPSrc:rtspsrc0:\nThe server closed the connection."),
        N, T, Action.BACKOFF,
    ),
    Case(
        "read error",
        err(RESOURCE_ERROR, 9, "Could not read from resource.",
            "Could not receive message. (Timeout while waiting for server response)"),
        N, T, Action.BACKOFF,
    ),
    Case(
        "401 unauthorized (real)",
        err(RESOURCE_ERROR, 15, "Unauthorized",
            "../gst/rtsp/gstrtspsrc.c(6899): gst_rtspsrc_send (): "
            "/GstPipeline:pipeline1/GstRTSPSrc:rtspsrc1:\nUnauthorized (401)"),
        A, REC, Action.SLOW_RETRY,
    ),
    Case("not authorized without status", err(RESOURCE_ERROR, 15, "Unauthorized"), A, REC, Action.SLOW_RETRY),
    Case(
        "403 forbidden",
        err(RESOURCE_ERROR, 9, "Unhandled error",
            "gstrtspsrc.c(6905): gst_rtspsrc_send ():\nForbidden (403)"),
        A, REC, Action.SLOW_RETRY,
    ),
    Case("forbidden text only", err(RESOURCE_ERROR, 1, "Forbidden"), A, REC, Action.SLOW_RETRY),
    Case(
        "404 not found (real)",
        err(RESOURCE_ERROR, 3, "Not found",
            "../gst/rtsp/gstrtspsrc.c(6895): gst_rtspsrc_send (): "
            "/GstPipeline:pipeline0/GstRTSPSrc:rtspsrc0:\nNot Found (404)"),
        NF, REC, Action.BACKOFF,
    ),
    Case("404 as the brief words it", err(RESOURCE_ERROR, 3, "Not Found", "404"), NF, REC, Action.BACKOFF),
    Case(
        "filesrc missing file (real)",
        err(RESOURCE_ERROR, 3, "Resource not found.",
            "../plugins/elements/gstfilesrc.c(553): gst_file_src_start (): "
            '/GstPipeline:pipeline1/GstFileSrc:filesrc0:\nNo such file "/nonexistent"', "filesrc0"),
        NF, REC, Action.BACKOFF,
    ),
    Case(
        "filesrc cannot open",
        err(RESOURCE_ERROR, 5, 'Could not open file "/srv/a.mp4" for reading.', "Permission denied",
            "filesrc0"),
        R, REC, Action.BACKOFF,
    ),
    Case(
        "filesrc directory (real)",
        err(RESOURCE_ERROR, 5, '"/tmp" is a directory.',
            "../plugins/elements/gstfilesrc.c(572): gst_file_src_start (): "
            "/GstPipeline:pipeline2/GstFileSrc:filesrc1", "filesrc1"),
        R, REC, Action.BACKOFF,
    ),
    Case(
        "461 unsupported transport",
        err(RESOURCE_ERROR, 9, "Unhandled error", "Unsupported transport (461)"),
        P, REC, Action.SWITCH_TRANSPORT,
    ),
    Case(
        "unsupported transport text",
        err(RESOURCE_ERROR, 1, "Unsupported transport"),
        P, REC, Action.SWITCH_TRANSPORT,
    ),
    Case(
        "no supported stream as stream-error (real)",
        err(STREAM_ERROR, 6,
            "No supported stream was found. You might need to allow more transport protocols or may "
            "otherwise be missing the right GStreamer RTSP extension plugin.",
            "../gst/rtsp/gstrtspsrc.c(7894): gst_rtspsrc_setup_streams_start (): "
            "/GstPipeline:pipeline0/GstRTSPSrc:rtspsrc0"),
        P, REC, Action.SWITCH_TRANSPORT,
    ),
    Case(
        "no supported stream as resource-error",
        err(RESOURCE_ERROR, 1,
            "No supported stream was found. You might need to allow more transport protocols or may "
            "otherwise be missing the right GStreamer RTSP extension plugin."),
        P, REC, Action.SWITCH_TRANSPORT,
    ),
    Case(
        "454 session not found",
        err(RESOURCE_ERROR, 9, "Unhandled error", "Session Not Found (454)"),
        P, T, Action.BACKOFF,
    ),
    Case("session not found text", err(RESOURCE_ERROR, 1, "Session Not Found"), P, T, Action.BACKOFF),
    Case(
        "503 service unavailable",
        err(RESOURCE_ERROR, 9, "Unhandled error", "Service Unavailable (503)"),
        N, T, Action.BACKOFF,
    ),
    Case("service unavailable text", err(RESOURCE_ERROR, 1, "Service Unavailable"), N, T, Action.BACKOFF),
    Case(
        "dns failure",
        err(RESOURCE_ERROR, 1, "Could not resolve server name.", "Could not resolve host 'cam.invalid'"),
        N, T, Action.BACKOFF,
    ),
    Case("dns failure short", err(RESOURCE_ERROR, 7, "Could not resolve"), N, T, Action.BACKOFF),
    Case("stall", ErrorReport("stall", message="no frame for 10.0 s"), N, T, Action.BACKOFF),
    Case("first-connect timeout", ErrorReport("timeout"), N, T, Action.BACKOFF),
    Case(
        "rtspsrc timeout element message",
        ErrorReport("element", element="rtspsrc0", message="GstRTSPSrcTimeout"),
        N, T, Action.BACKOFF,
    ),
    Case("eos", ErrorReport("eos"), N, T, Action.BACKOFF),
    Case(
        "demux invalid file (real)",
        err(STREAM_ERROR, 9, "This file is invalid and cannot be played.",
            "../gst/isomp4/qtdemux.c(555): gst_qtdemux_pull_atom (): "
            "/GstPipeline:pipeline3/GstQTDemux:qtdemux0:\natom has bogus size 1734439522", "qtdemux0"),
        D, REC, Action.BACKOFF,
    ),
    Case(
        "no playable streams",
        err(STREAM_ERROR, 9, "This file contains no playable streams.", element="qtdemux0"),
        D, REC, Action.BACKOFF,
    ),
    Case(
        "no playable streams other domain",
        err(STREAM_ERROR, 1, "This file contains no playable streams.", element="decodebin0"),
        D, REC, Action.BACKOFF,
    ),
    Case("decode warning", warn(STREAM_ERROR, 7, "Could not decode stream."), D, T, Action.IGNORE),
    Case("decode error", err(STREAM_ERROR, 7, "Could not decode stream."), D, REC, Action.BACKOFF),
    Case("stream format", err(STREAM_ERROR, 11, "Stream format error."), D, REC, Action.BACKOFF),
    Case("no space left", err(RESOURCE_ERROR, 14, "No space left on the resource."), R, REC, Action.BACKOFF),
    Case("write error", err(RESOURCE_ERROR, 10, "Could not write to resource."), R, REC, Action.BACKOFF),
    Case(
        "open for write",
        err(RESOURCE_ERROR, 6, 'Could not open file "/rec/a.mp4" for writing.', element="filesink0"),
        R, REC, Action.BACKOFF,
    ),
    Case("busy", err(RESOURCE_ERROR, 4, "Device busy"), R, T, Action.BACKOFF),
    Case(
        "missing plugin",
        err(CORE_ERROR, 10, "Your GStreamer installation is missing a plug-in."),
        PL, F, Action.STOP,
    ),
    Case(
        "negotiation",
        err(CORE_ERROR, 7, "GStreamer encountered a general supporting library error."),
        PL, REC, Action.SLOW_RETRY,
    ),
    Case("wrong type", err(STREAM_ERROR, 5, "Wrong type"), PL, REC, Action.SLOW_RETRY),
    Case("codec not found", err(STREAM_ERROR, 6, "No decoder available for type 'video/x-h265'."),
         PL, REC, Action.SLOW_RETRY),
    Case("type not found", err(STREAM_ERROR, 4, "Could not determine type of stream."),
         PL, REC, Action.SLOW_RETRY),
    Case("core pad error", err(CORE_ERROR, 4, "Internal data stream error."), PL, REC, Action.BACKOFF),
    Case(
        "internal data stream error not-negotiated",
        err(STREAM_ERROR, 1, "Internal data stream error.", "streaming stopped, reason not-negotiated (-4)"),
        PL, REC, Action.BACKOFF,
    ),
    Case("python exception", ErrorReport("internal", message="KeyError: 'x'"), INT, REC, Action.BACKOFF),
    Case(
        "udp timeout, rtspsrc retries tcp",
        warn(RESOURCE_ERROR, 9, "Could not read from resource.",
             "Could not receive any UDP packets for 5.0000 seconds, maybe your firewall is blocking it. "
             "Retrying using a tcp connection."),
        N, T, Action.IGNORE,
    ),
    Case("other warning", warn(CORE_ERROR, 13, "Changing state failed."), PL, T, Action.IGNORE),
    Case("unauthorized only as warning", warn(RESOURCE_ERROR, 15, "Unauthorized"), PL, T, Action.IGNORE),
    Case("unknown error", err("gst-library-error-quark", 3, "Could not initialize library."),
         PL, REC, Action.BACKOFF),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_gstreamer_messages(case: Case) -> None:
    result = Classifier().classify(case.report)
    assert (result.category, result.transience, result.action) == (
        case.category,
        case.transience,
        case.action,
    ), result.rule


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (
            err(RESOURCE_ERROR, 15, "Unauthorized", "Unauthorized (401)"),
            "authentication failed (check credentials)",
        ),
        (ErrorReport("eos"), "source ended (EOS on a live source is a disconnect)"),
        (ErrorReport("stall"), "no frame for longer than the stall timeout"),
    ],
)
def test_exact_reasons(report: ErrorReport, reason: str) -> None:
    assert Classifier().classify(report).reason == reason


def test_classification_names_the_rule() -> None:
    result = Classifier().classify(err(CORE_ERROR, 10, "missing a plug-in"))
    assert result == Classification(
        PL, F, Action.STOP, "a GStreamer plugin is missing (install it)", "missing_plugin"
    )


def test_fallback_rules_and_reasons() -> None:
    classifier = Classifier()
    warning = classifier.classify(warn("gst-library-error-quark", 1, "Something odd"))
    assert (warning.rule, warning.reason, warning.action) == (
        "fallback_warning",
        "Something odd",
        Action.IGNORE,
    )
    error = classifier.classify(ErrorReport("error"))
    assert (error.rule, error.reason, error.action) == ("fallback", "unclassified error", Action.BACKOFF)


def test_explicit_rtsp_status_wins_over_text() -> None:
    report = ErrorReport(
        "error", RESOURCE_ERROR, 9, "rtspsrc0", "Unhandled error", "Not Found (404)", rtsp_status=503
    )
    assert Classifier().classify(report).rule == "service_unavailable"


def test_extra_rules_are_checked_before_defaults() -> None:
    vendor = Rule(
        "acme_busy_means_auth",
        Category.AUTH,
        Transience.RECOVERABLE,
        Action.QUARANTINE,
        element=r"^rtspsrc",
        message=r"max sessions",
        reason="camera is out of sessions",
    )
    classifier = Classifier([vendor])
    busy = err(RESOURCE_ERROR, 7, "Could not open resource", "server says: MAX SESSIONS reached")
    assert classifier.classify(busy) == Classification(
        A, REC, Action.QUARANTINE, "camera is out of sessions", "acme_busy_means_auth"
    )
    # Element regex must match too; otherwise the built-in rule applies.
    other = err(RESOURCE_ERROR, 7, "Could not open resource", "max sessions", element="souphttpsrc0")
    assert classifier.classify(other).rule == "connect_failed"
    assert classifier.rules[0] is vendor
    assert classifier.rules[1:] == DEFAULT_RULES


def test_rule_reason_defaults_to_message_then_name() -> None:
    rule = Rule("my_rule_name", N, T, Action.RETRY_NOW, kind="element")
    classifier = Classifier([rule])
    assert classifier.classify(ErrorReport("element", message=" custom text ")).reason == "custom text"
    assert classifier.classify(ErrorReport("element")).reason == "my rule name"


def test_rule_code_and_domain_must_both_match() -> None:
    rule = Rule("only_code_2", N, T, Action.RETRY_NOW, domain=RESOURCE_ERROR, code=2)
    classifier = Classifier([rule])
    assert classifier.classify(err(RESOURCE_ERROR, 2)).rule == "only_code_2"
    assert classifier.classify(err(STREAM_ERROR, 2)).rule == "fallback"


def test_default_rule_names_are_unique() -> None:
    names = [r.name for r in DEFAULT_RULES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("Unauthorized (401)", 401),
        (
            "gstrtspsrc.c(6895): gst_rtspsrc_send (): /GstPipeline:p/GstRTSPSrc:rtspsrc0:\nNot Found (404)",
            404,
        ),
        ("RTSP/1.0 454 Session Not Found", 454),
        ("HTTP/1.1 503 Service Unavailable", 503),
        ("Got error response: 461 (Unsupported transport).", 461),
        ("status code 403", 403),
        ("../plugins/elements/gstfilesrc.c(553): gst_file_src_start (): no such file", None),
        ("streaming stopped, reason not-negotiated (-4)", None),
        ("atom has bogus size 1734439522", None),
        ("Failed to connect. (Connection refused)", None),
        ("value (999)", None),
        ("", None),
    ],
)
def test_rtsp_status_from_text(text: str, status: int | None) -> None:
    assert rtsp_status_from_text(text) == status


def test_rule_from_mapping_builds_a_rule() -> None:
    rule = rule_from_mapping(
        {
            "name": "vendor_x",
            "category": "auth",
            "transience": "recoverable",
            "action": "quarantine",
            "kind": "error",
            "domain": RESOURCE_ERROR,
            "code": 9,
            "element": "rtspsrc",
            "message": "licen[cs]e",
            "rtsp_status": 402,
            "reason": "camera licence expired",
        }
    )
    assert rule == Rule(
        "vendor_x", A, REC, Action.QUARANTINE, "error", RESOURCE_ERROR, 9, "rtspsrc", "licen[cs]e", 402,
        "camera licence expired",
    )  # fmt: skip
    assert rule.category is Category.AUTH
    result = Classifier([rule]).classify(err(RESOURCE_ERROR, 9, "Unhandled error", "Licence expired (402)"))
    assert result.rule == "vendor_x"


def test_rule_from_mapping_minimal() -> None:
    rule = rule_from_mapping(
        {"name": "n", "category": "network", "transience": "transient", "action": "backoff"}
    )
    assert (rule.kind, rule.domain, rule.code, rule.element, rule.message, rule.rtsp_status, rule.reason) == (
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


BASE = {"name": "bad", "category": "network", "transience": "transient", "action": "backoff"}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"category": "weather"}, "category"),
        ({"transience": "sometimes"}, "transience"),
        ({"action": "panic"}, "action"),
        ({"action": None}, "action"),
        ({"category": 3}, "category"),
        ({"message": "(unclosed"}, "message"),
        ({"element": "[z-a]"}, "element"),
        ({"kind": "erorr"}, "kind"),
        ({"code": "9"}, "code"),
        ({"code": True}, "code"),
        ({"rtsp_status": 42}, "rtsp_status"),
        ({"domain": 5}, "domain"),
        ({"reason": ["x"]}, "reason"),
        ({"name": ""}, "name"),
        ({"severity": "high"}, "severity"),
    ],
)
def test_rule_from_mapping_names_the_bad_field(override: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"'{field}'"):
        rule_from_mapping({**BASE, **override})


def test_rule_from_mapping_requires_enums() -> None:
    data = dict(BASE)
    del data["transience"]
    with pytest.raises(ValueError, match="'transience' is required"):
        rule_from_mapping(data)


def test_rule_rejects_invalid_regex_directly() -> None:
    with pytest.raises(ValueError, match="field 'message'"):
        Rule("r", N, T, Action.BACKOFF, message="(")


def test_enum_values_match_the_config_vocabulary() -> None:
    assert [c.value for c in Category] == [
        "network", "auth", "not_found", "protocol", "decode", "resource", "pipeline", "internal",
    ]  # fmt: skip
    assert [t.value for t in Transience] == ["transient", "recoverable", "fatal"]
    assert [a.value for a in Action] == [
        "ignore", "retry_now", "backoff", "slow_retry", "switch_transport", "quarantine", "stop",
    ]  # fmt: skip


def test_policy_package_does_not_import_gstreamer() -> None:
    code = "import sys, streamwarden.policy; sys.exit(1 if 'gi' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_http_connection_refused_is_network_not_pipeline() -> None:
    report = ErrorReport(
        kind="error",
        domain="gst-stream-error-quark",
        code=1,
        element="curlhttpsrc:curlhttpsrc0",
        message="Internal data stream error.",
        debug="streaming stopped, reason error (-5)",
    )
    verdict = Classifier().classify(report)
    assert (verdict.category, verdict.action, verdict.rule) == (
        Category.NETWORK,
        Action.BACKOFF,
        "http_transfer_failed",
    )
    other = Classifier().classify(report.__class__(**{**report.__dict__, "element": "qtdemux:qtdemux0"}))
    assert other.category == Category.PIPELINE
