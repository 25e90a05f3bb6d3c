"""The REST control plane: FastAPI in the same process as the engine, never on its thread.

Every engine call blocks until the GLib loop has run it, so handlers run them with
``asyncio.to_thread``: the asyncio loop keeps serving (health checks, metrics) while the
engine works. Errors are RFC 9457 ``application/problem+json`` naming the offending field;
bad input is always a 4xx, never a 500. Credentials never leave: specs are shown redacted
and every string of every response passes through ``redact`` once more on the way out.

Request bodies are read and validated here rather than by FastAPI's body binding, so that a
body limit, strict JSON (no NaN/Infinity), RFC 7396 merge patches and redacted error values
apply uniformly; the OpenAPI document declares the same schemas by hand.
"""

import asyncio

# asyncio.to_thread imports this lazily, at the first request: a process out of descriptors
# (EMFILE) could not, and every engine call answered 500 until descriptors came back.
import concurrent.futures.thread  # noqa: F401
import copy
import hmac
import ipaddress
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from streamwarden import __version__
from streamwarden.config import (  # _location: the field-path format config errors use too
    ApiConfig,
    Config,
    LimitsConfig,
    StreamSpec,
    _location,
    resolve_relative_paths,
)
from streamwarden.engine import AdmissionRefusedError, Engine, StreamExistsError, StreamNotFoundError
from streamwarden.metrics import CONTENT_TYPE, create_registry, render
from streamwarden.persist import StateSaver, StateStore, json_with_secrets
from streamwarden.redact import REDACTED, redact
from streamwarden.state import StreamState

__all__ = [
    "MAX_BODY_BYTES",
    "TOKEN_ENV",
    "InsecureApiError",
    "Problem",
    "create_app",
    "is_loopback",
    "resolve_token",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBLEM_JSON = "application/problem+json"
MERGE_PATCH_JSON = "application/merge-patch+json"
MAX_BODY_BYTES = 1024 * 1024
# A body trickled in slowly holds a request task (and a connection) as long as it lasts; the
# server bounds the request head (httpserver.py), this bounds the body.
BODY_TIMEOUT = 10.0
TOKEN_ENV = "STREAMWARDEN_API_TOKEN"
READY_TIMEOUT = 1.0
PROBLEM_TYPE = "urn:streamwarden:problem:"
REF = "#/components/schemas/"
SHOWN_VALUE_CHARS = 120
# Values of fields with these names are never echoed in an error, whatever their type.
_SECRET_NAME = re.compile(r"pass(word|wd)?|pwd|secret|token|api[_-]?key|credential", re.IGNORECASE)


class InsecureApiError(RuntimeError):
    """The API would listen beyond loopback without a token: refused at start."""


# -- response models (the OpenAPI contract) --------------------------------------------------------
class FieldError(BaseModel):
    field: str = Field(description="Path of the offending field, e.g. `source.uri` or `recovery.backoff`.")
    message: str = Field(description="What is wrong, with the offending value redacted of credentials.")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="A URI naming the kind of problem (`urn:streamwarden:problem:...`).")
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldError] | None = Field(default=None, description="Per-field problems (422, 409).")


class _Open(BaseModel):
    """Responses may grow fields as the engine does: unknown ones pass through."""

    model_config = ConfigDict(extra="allow")


class HealthInfo(_Open):
    fps: float
    last_frame_age_seconds: float | None = Field(description="None until the current attempt has a frame.")
    frames_total: int
    recoveries_total: int
    bytes_total: int | None = None
    bitrate_bps: float | None = None
    uptime_seconds: float | None = None
    playing_seconds: float | None = None
    errors_total: int | None = None
    errors_by_category: dict[str, int] | None = None
    recovery_seconds_last: float | None = None
    recovery_seconds_p50: float | None = None
    recovery_seconds_p95: float | None = None
    max_frame_gap_seconds: float | None = None
    attempts_total: int | None = None


class BreakerInfo(_Open):
    state: str = Field(description="closed, half_open or open.")
    consecutive_failures: int | None = None
    trips: int | None = None
    seconds_until_half_open: float | None = None


class QuarantineInfo(_Open):
    active: bool
    reason: str | None = None
    seconds_remaining: float | None = None


class StreamInfo(_Open):
    id: str
    source_type: str
    state: StreamState
    reason: str
    since_seconds: float | None = Field(default=None, description="Time in the current state.")
    transport: str | None = Field(default=None, description="tcp or udp for RTSP sources, else None.")
    retry_in_seconds: float | None = Field(default=None, description="Next attempt, while waiting for one.")
    backoff_attempts: int | None = None
    spec: dict[str, Any] = Field(description="The stream spec with every credential replaced by ***.")
    health: HealthInfo
    breaker: BreakerInfo | None = None
    quarantine: QuarantineInfo | None = None
    last_error: dict[str, Any] | None = None
    recorder: dict[str, Any] | None = Field(default=None, description="None when the stream does not record.")
    server: dict[str, Any] | None = Field(default=None, description="None unless serve: true.")


class EventInfo(_Open):
    at: float = Field(description="Wall-clock UNIX time.")
    monotonic: float
    from_state: StreamState
    to_state: StreamState
    reason: str
    category: str | None = None
    transience: str | None = None


class RecordingInfo(BaseModel):
    name: str = Field(description="Path relative to `<record.dir>/<id>/` (`/`-separated).")
    bytes: int
    mtime: datetime = Field(description="Last modification (UTC): the end of a closed segment.")


class Status(BaseModel):
    status: str


# -- errors ----------------------------------------------------------------------------------------
class ProblemError(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})


def _problem_response(request: Request, error: ProblemError) -> JSONResponse:
    problem = Problem(
        type=PROBLEM_TYPE + error.kind,
        title=error.title,
        status=error.status,
        detail=redact(error.detail),
        instance=redact(request.url.path),
        errors=error.errors,
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=error.headers,
    )


_RESPONSE_TEXT = {
    400: "Malformed request body (not JSON, NaN/Infinity, nested too deep)",
    401: "Missing or wrong bearer token",
    404: "No stream with this id",
    409: "A stream with this id already exists",
    408: f"Request body not received within {BODY_TIMEOUT:g} s",
    413: f"Request body larger than {MAX_BODY_BYTES} bytes",
    422: "Invalid stream spec or parameter: `errors` names each field",
    503: "The engine is not running or did not answer in time",
}


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        code: {
            "description": _RESPONSE_TEXT[code],
            "content": {PROBLEM_JSON: {"schema": {"$ref": REF + "Problem"}}},
        }
        for code in codes
    }


def _not_found(stream_id: str) -> ProblemError:
    return ProblemError(404, "stream-not-found", "Stream not found", f"no stream with id {stream_id!r}")


def _invalid(errors: list[FieldError]) -> ProblemError:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ProblemError(
        422, "invalid-spec", "Invalid stream spec", f"{first.field}: {first.message}{more}", errors=errors
    )


def _shown(loc: tuple[int | str, ...], value: object) -> str:
    """The offending value as echoed in an error: secrets hidden, userinfo masked, length capped."""
    if any(isinstance(part, str) and _SECRET_NAME.search(part) for part in loc):
        return repr(REDACTED)
    if not isinstance(value, str):
        return redact(repr(value))[:SHOWN_VALUE_CHARS]
    text = redact(value)
    if "@" in text and "://" not in text:  # user:pass@host without a scheme
        text = REDACTED + text[text.rindex("@") :]
    if len(text) > SHOWN_VALUE_CHARS:
        text = text[:SHOWN_VALUE_CHARS] + "..."
    return repr(text)


def _field_errors(exc: ValidationError) -> list[FieldError]:
    """One entry per pydantic error, the field as the config's error lines name it."""
    errors = []
    for error in exc.errors(include_url=False, include_context=False):
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if error["type"] != "missing" and not isinstance(value, dict | list):
            message = f"{message} (got {_shown(loc, value)})"
        errors.append(FieldError(field=redact(_location(loc)), message=redact(message)))
    return errors


# -- auth ------------------------------------------------------------------------------------------
_bearer = HTTPBearer(
    auto_error=False,
    description=f"The token of `api.token` in the config, or of the {TOKEN_ENV} environment variable.",
)


def resolve_token(config: ApiConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The config's ``api.token``, else ``$STREAMWARDEN_API_TOKEN``; None disables auth."""
    if config.token is not None and config.token.get_secret_value().strip():
        return config.token.get_secret_value().strip()
    value = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    return value or None


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def _check_token(token: str) -> Callable[..., Any]:
    expected = token.encode()

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise ProblemError(
                401,
                "unauthorized",
                "Unauthorized",
                "a valid bearer token is required (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token


# -- request bodies --------------------------------------------------------------------------------
def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _malformed(detail: str) -> ProblemError:
    return ProblemError(400, "malformed-json", "Malformed JSON", detail)


async def _read_json(request: Request) -> Any:
    """The body as JSON, within MAX_BODY_BYTES, counted as it streams in (no Content-Length trust)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ProblemError(413, "body-too-large", "Request body too large", _RESPONSE_TEXT[413])
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ProblemError(413, "body-too-large", "Request body too large", _RESPONSE_TEXT[413])
                chunks.append(chunk)
    except TimeoutError:
        raise ProblemError(
            408, "body-timeout", "Request body too slow", _RESPONSE_TEXT[408], headers={"Connection": "close"}
        ) from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise _malformed("the request body is empty: a JSON object is required")
    try:
        return json.loads(raw, parse_float=_finite_float, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _malformed(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise _malformed("the body is not UTF-8 text") from None
    except RecursionError:
        raise _malformed("JSON nested too deeply") from None
    except ValueError as exc:
        raise _malformed(str(exc)) from None


def _validate_spec(data: Any) -> StreamSpec:
    """Strict JSON validation: the types the OpenAPI schema states (no "0" for false, no "5" for 5)."""
    if not isinstance(data, dict):
        raise _invalid([FieldError(field="(root)", message="must be a JSON object (a stream spec)")])
    try:
        spec = StreamSpec.model_validate_json(json.dumps(data, default=json_with_secrets), strict=True)
    except ValidationError as exc:
        raise _invalid(_field_errors(exc)) from None
    # The policies check cross-field rules the config models do not (yet) all check themselves,
    # e.g. breaker.max_open_seconds >= open_seconds: without this the engine raises -> a 500.
    recovery = spec.recovery
    errors = []
    for name, section in (
        ("recovery.backoff", recovery.backoff),
        ("recovery.breaker", recovery.breaker),
        ("recovery.quarantine", recovery.quarantine),
    ):
        try:
            section.to_policy()
        except ValueError as exc:
            errors.append(FieldError(field=name, message=redact(str(exc))))
    if errors:
        raise _invalid(errors)
    return spec


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _models_in(annotation: object) -> tuple[type[BaseModel], ...]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return (annotation,)
    return tuple(model for arg in get_args(annotation) for model in _models_in(arg))


def _unknown_nulls(
    patch: dict[str, Any], models: tuple[type[BaseModel], ...], path: str = ""
) -> list[FieldError]:
    """``{"typo": null}`` would merge into nothing and pass: an unknown field is an error even then."""
    known = {name: info for model in models for name, info in model.model_fields.items()}
    errors = []
    for key, value in patch.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            if value is None:
                errors.append(FieldError(field=redact(where), message="Extra inputs are not permitted"))
            continue  # a non-null unknown field fails validation of the merged spec
        nested = _models_in(known[key].annotation)
        if isinstance(value, dict) and nested:
            errors.extend(_unknown_nulls(value, nested, where))
    return errors


def _patched_spec(current: StreamSpec, patch: Any, stream_id: str) -> StreamSpec:
    """The current spec with ``patch`` merged in, validated as a whole.

    A patch whose source names another ``type`` replaces the source (merging an rtsp source into
    a file source could only produce leftover fields). Secrets stay ``SecretStr`` throughout.
    """
    if not isinstance(patch, dict):
        raise _invalid([FieldError(field="(root)", message="must be a JSON object (a merge patch)")])
    unknown = _unknown_nulls(patch, (StreamSpec,))
    if unknown:
        raise _invalid(unknown)
    if "id" in patch and patch["id"] != stream_id:
        message = f"must match the path ({stream_id!r}) or be left out"
        raise _invalid([FieldError(field="id", message=message)])
    base = current.model_dump(mode="python")
    source = patch.get("source")
    if isinstance(source, dict) and source.get("type") not in (None, base["source"]["type"]):
        base["source"] = {}
    merged = merge_patch(base, patch)
    merged["id"] = stream_id
    return _validate_spec(merged)


# -- the app ---------------------------------------------------------------------------------------
def _scrub(value: Any) -> Any:
    """Redacts every string of a response once more: a leak would need two mistakes."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _list_recordings(spec: StreamSpec, since: datetime | None, until: datetime | None) -> list[RecordingInfo]:
    """Interim (until the segment index serves this): files under ``<record.dir>/<id>/``, at any
    depth (a file template may add date folders), filtered on modification time."""
    if spec.record is None:
        return []
    root = Path(spec.record.dir) / spec.id
    found = []
    try:
        walk = list(os.walk(root, followlinks=False))
    except ValueError:  # a path the OS rejects (e.g. a NUL byte)
        return []
    for folder, _dirs, names in walk:
        for name in names:
            if name.startswith("."):
                continue
            path = Path(folder, name)
            try:
                info = path.lstat()
            except OSError:
                continue  # rotated away while we looked
            if not stat.S_ISREG(info.st_mode):
                continue
            mtime = datetime.fromtimestamp(info.st_mtime, UTC)
            if (since is not None and mtime < since) or (until is not None and mtime > until):
                continue
            relative = path.relative_to(root).as_posix()
            found.append(RecordingInfo(name=relative, bytes=info.st_size, mtime=mtime))
    return sorted(found, key=lambda r: r.name)


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE and isinstance(route, Route) and route.methods:
            methods |= route.methods
    return sorted(methods)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)  # a time without a zone is UTC


class _ControlApp(FastAPI):
    """FastAPI whose OpenAPI document also declares the hand-validated bodies and problems."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            _complete_openapi(super().openapi())
        return self.openapi_schema or {}


def _complete_openapi(document: dict[str, Any]) -> None:
    (_, defs) = models_json_schema(
        [(StreamSpec, "validation"), (LimitsConfig, "validation"), (Problem, "serialization")],
        ref_template=REF + "{model}",
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in defs["$defs"].items():
        if name in schemas and schemas[name] != schema:
            raise RuntimeError(f"OpenAPI component {name} is defined twice with different schemas")
        schemas[name] = schema
    patch = _partial_object(schemas["StreamSpec"], schemas, top_level=True)
    patch["title"] = "StreamPatch"
    patch["description"] = (
        "A JSON merge patch (RFC 7396) of a stream spec: only the fields to change; null removes "
        "a field (back to its default; `record: null` stops recording). Nested objects merge, "
        "except a `source` with another `type`, which replaces the source. `id`, if present, "
        "must equal the path's. The merged spec must be valid as a whole (else 422)."
    )
    schemas["StreamPatch"] = patch
    # FastAPI's own 422 shape is never sent: its handler is replaced by the problem one.
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.get("422", {}).get("description") == "Validation Error":
                del responses["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _partial(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """The merge-patch form of a schema: every object's fields optional and nullable, recursively."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix(REF)
        target = schemas[name]
        if target.get("type") != "object":
            return schema  # enums and other leaves are patched whole
        patch_name = f"{name}Patch"
        if patch_name not in schemas:
            schemas[patch_name] = {}  # reserve: recursive models must not loop
            schemas[patch_name] = _partial_object(target, schemas)
        return {"$ref": REF + patch_name}
    for key in ("anyOf", "oneOf"):
        if key in schema:
            variants = [_partial(v, schemas) for v in schema[key]]
            rest = {k: v for k, v in schema.items() if k not in (key, "discriminator")}
            return {**rest, "anyOf": variants}
    if schema.get("type") == "object" and "properties" in schema:
        return _partial_object(schema, schemas)
    extra = schema.get("additionalProperties")
    if schema.get("type") == "object" and isinstance(extra, dict):
        # A map (e.g. recovery.strategies): a null value deletes that key in a merge patch.
        return {**schema, "additionalProperties": {"anyOf": [_partial(extra, schemas), {"type": "null"}]}}
    return schema


def _partial_object(
    schema: dict[str, Any], schemas: dict[str, Any], *, top_level: bool = False
) -> dict[str, Any]:
    result = {k: copy.deepcopy(v) for k, v in schema.items() if k not in ("required", "properties")}
    if "title" in result:
        result["title"] = f"{result['title']}Patch"
    properties = {}
    for name, prop in schema.get("properties", {}).items():
        partial = _partial(prop, schemas)
        # The spec's id is the path's; its source cannot be removed: no null for those two.
        if top_level and name in ("id", "source"):
            properties[name] = partial
        else:
            properties[name] = {"anyOf": [partial, {"type": "null"}]}
    result["properties"] = properties
    return result


def _json_body(schema: str, *media_types: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {media: {"schema": {"$ref": REF + schema}} for media in media_types},
        }
    }


def create_app(
    engine: Engine,
    *,
    config: ApiConfig,
    state_store: StateStore | None = None,
    registry: CollectorRegistry | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> FastAPI:
    """The control-plane app for ``engine``.

    Raises InsecureApiError when ``config.host`` is not loopback and no token is configured.
    ``base_dir`` resolves relative file and record paths of API-added streams (the config's
    directory under ``streamwarden run``; the working directory otherwise).
    """
    token = resolve_token(config, environ)
    if token is None and not is_loopback(config.host):
        raise InsecureApiError(
            f"the API would listen on {config.host} without a token: set api.token in the config or "
            f"{TOKEN_ENV} (or bind api.host to 127.0.0.1)"
        )
    registry = registry if registry is not None else create_registry(engine)
    saver = StateSaver(engine, state_store) if state_store is not None else None
    if saver is not None:
        engine.add_listener(saver.on_event)
    resolve_base = base_dir or Path.cwd()
    write_deps = [Depends(_check_token(token))] if token else []
    read_deps = [] if config.read_only_open else write_deps
    auth_codes: tuple[int, ...] = (401,) if token else ()
    read_codes: tuple[int, ...] = () if config.read_only_open else auth_codes

    app = _ControlApp(
        title="streamwarden",
        version=__version__,
        description=(
            "Control plane of a streamwarden engine: add, change and remove streams, read their "
            "health, events and recordings. Errors are `application/problem+json` (RFC 9457)."
        ),
    )
    app.state.engine = engine
    app.state.registry = registry
    app.state.saver = saver

    # -- error handlers ------------------------------------------------------------------------
    @app.exception_handler(ProblemError)
    async def _on_problem(request: Request, exc: ProblemError) -> JSONResponse:
        return _problem_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only; name them all.
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return _problem_response(
            request, ProblemError(exc.status_code, "http", title, detail, headers=headers)
        )

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldError(
                field=redact(_location(tuple(e["loc"][1:]) or tuple(e["loc"]))),
                message=redact(str(e.get("msg", "invalid"))),
            )
            for e in exc.errors()
        ] or [FieldError(field="(request)", message="invalid")]
        first = errors[0]
        error = ProblemError(
            422, "invalid-parameter", "Invalid parameter", f"{first.field}: {first.message}", errors=errors
        )
        return _problem_response(request, error)

    @app.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("API %s %s failed: %s", request.method, request.url.path, redact(repr(exc)))
        error = ProblemError(500, "internal", "Internal error", "an internal error occurred; see the log")
        return _problem_response(request, error)

    # -- helpers -------------------------------------------------------------------------------
    async def call(func: Callable[..., T], *args: Any) -> T:
        """Runs one blocking engine call on a worker thread and maps engine errors to problems."""
        try:
            return await asyncio.to_thread(func, *args)
        except StreamNotFoundError as exc:
            raise _not_found(str(exc.args[0]) if exc.args else "?") from None
        except StreamExistsError as exc:
            stream_id = str(exc.args[0]) if exc.args else "?"
            raise ProblemError(
                409,
                "stream-exists",
                "Stream already exists",
                f"a stream with id {stream_id!r} already exists",
                errors=[FieldError(field="id", message=f"{stream_id!r} is taken")],
            ) from None
        except AdmissionRefusedError as exc:
            field, _, detail = str(exc).partition(": ")
            raise ProblemError(
                409,
                "limit-reached",
                "Resource limit reached",
                redact(str(exc)),
                errors=[FieldError(field=field, message=redact(detail))],
            ) from None
        except TimeoutError:
            raise ProblemError(
                503, "engine-unavailable", "Engine unavailable", "the engine did not answer in time"
            ) from None
        except RuntimeError:
            if engine.loop.running:
                raise
            raise ProblemError(
                503, "engine-unavailable", "Engine unavailable", "the engine is not running"
            ) from None

    persist_lock = threading.Lock()

    def _persist() -> None:
        if saver is None:
            return
        with persist_lock:
            try:
                saver.save_now()
            except Exception as exc:  # the change is live; losing durability must be loud, not a 500
                log.error("could not save the state file %s: %s", saver.store.path, redact(str(exc)))

    async def persist() -> None:
        await asyncio.to_thread(_persist)

    def absolute(spec: StreamSpec) -> StreamSpec:
        return resolve_relative_paths(Config.model_construct(streams=[spec]), resolve_base).streams[0]

    def apply_update(_old: StreamSpec, new: StreamSpec) -> None:
        engine.update_stream(new)  # stops a stream being disabled, starts one being enabled

    # -- endpoints -----------------------------------------------------------------------------
    @app.get(
        "/healthz",
        response_model=Status,
        tags=["probes"],
        summary="The process is alive (always open, no token)",
    )
    async def healthz() -> Status:
        return Status(status="ok")

    @app.get(
        "/readyz",
        response_model=Status,
        tags=["probes"],
        summary="The engine's loop answers within 1 s",
        dependencies=read_deps,
        responses=_problems(*read_codes, 503),
    )
    async def readyz() -> Status:
        if not engine.loop.running:
            raise ProblemError(503, "engine-unavailable", "Engine unavailable", "the engine is not running")
        try:
            await asyncio.to_thread(engine.loop.call_sync, lambda: True, READY_TIMEOUT)
        except TimeoutError:
            raise ProblemError(
                503, "engine-unavailable", "Engine unavailable", "the engine loop did not answer within 1 s"
            ) from None
        return Status(status="ready")

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["probes"],
        summary="Prometheus metrics (text format 0.0.4)",
        dependencies=read_deps,
        responses={
            **_problems(*read_codes, 503),
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics"},
        },
    )
    async def metrics() -> Response:
        try:
            body = await asyncio.to_thread(render, registry)
        except (TimeoutError, RuntimeError):
            raise ProblemError(
                503, "engine-unavailable", "Engine unavailable", "the engine did not answer in time"
            ) from None
        return Response(content=body, media_type=CONTENT_TYPE)

    @app.get(
        "/streams",
        response_model=list[StreamInfo],
        tags=["streams"],
        summary="Every stream with its state and health",
        dependencies=read_deps,
        responses=_problems(*read_codes, 503),
    )
    async def list_streams() -> list[dict[str, Any]]:
        infos: list[dict[str, Any]] = _scrub(await call(engine.list_streams))
        return infos

    @app.post(
        "/streams",
        status_code=201,
        response_model=StreamInfo,
        tags=["streams"],
        summary="Add a stream (the body is a stream spec exactly as in the config file)",
        dependencies=write_deps,
        responses=_problems(400, *auth_codes, 408, 409, 413, 422, 503),
        openapi_extra=_json_body("StreamSpec", "application/json"),
    )
    async def add_stream(request: Request, response: Response) -> dict[str, Any]:
        spec = absolute(_validate_spec(await _read_json(request)))
        await call(engine.add_stream, spec)
        log.info("[%s] added through the API", spec.id)
        await persist()
        response.headers["Location"] = f"/streams/{spec.id}"
        info: dict[str, Any] = _scrub(await call(engine.info, spec.id))
        return info

    @app.get(
        "/streams/{stream_id}",
        response_model=StreamInfo,
        tags=["streams"],
        summary="One stream: state, redacted spec, health, breaker, quarantine, recorder, server",
        dependencies=read_deps,
        responses=_problems(*read_codes, 404, 503),
    )
    async def get_stream(stream_id: str) -> dict[str, Any]:
        info: dict[str, Any] = _scrub(await call(engine.info, stream_id))
        return info

    @app.patch(
        "/streams/{stream_id}",
        response_model=StreamInfo,
        tags=["streams"],
        summary="Change a stream (JSON merge patch: source, recovery, record, serve, enabled)",
        dependencies=write_deps,
        responses=_problems(400, *auth_codes, 404, 408, 413, 422, 503),
        openapi_extra=_json_body("StreamPatch", "application/json", MERGE_PATCH_JSON),
    )
    async def patch_stream(stream_id: str, request: Request) -> dict[str, Any]:
        current = await call(engine.spec, stream_id)
        new = absolute(_patched_spec(current, await _read_json(request), stream_id))
        await call(apply_update, current, new)
        log.info("[%s] changed through the API", stream_id)
        await persist()
        info: dict[str, Any] = _scrub(await call(engine.info, stream_id))
        return info

    @app.delete(
        "/streams/{stream_id}",
        status_code=204,
        response_class=Response,
        tags=["streams"],
        summary="Remove a stream (its recording is closed cleanly)",
        dependencies=write_deps,
        responses=_problems(*auth_codes, 404, 503),
    )
    async def delete_stream(stream_id: str) -> Response:
        await call(engine.remove_stream, stream_id)
        log.info("[%s] removed through the API", stream_id)
        await persist()
        return Response(status_code=204)

    @app.post(
        "/streams/{stream_id}/restart",
        response_model=StreamInfo,
        tags=["streams"],
        summary="Tear the pipeline down and attempt again now (counters kept)",
        dependencies=write_deps,
        responses=_problems(*auth_codes, 404, 503),
    )
    async def restart_stream(stream_id: str) -> dict[str, Any]:
        await call(engine.restart, stream_id)
        log.info("[%s] restart requested through the API", stream_id)
        info: dict[str, Any] = _scrub(await call(engine.info, stream_id))
        return info

    @app.post(
        "/streams/{stream_id}/resume",
        response_model=StreamInfo,
        tags=["streams"],
        summary="Take a stream out of quarantine (or FAILED) and retry now",
        dependencies=write_deps,
        responses=_problems(*auth_codes, 404, 503),
    )
    async def resume_stream(stream_id: str) -> dict[str, Any]:
        await call(engine.resume, stream_id)
        log.info("[%s] resumed through the API", stream_id)
        await persist()
        info: dict[str, Any] = _scrub(await call(engine.info, stream_id))
        return info

    @app.get(
        "/incidents",
        tags=["engine"],
        summary="Shared-cause incidents and error-rate alarms: open first, then recently closed",
        dependencies=read_deps,
        responses=_problems(*read_codes, 503),
    )
    async def incidents() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = _scrub(await call(engine.incident_list))
        return found

    @app.get(
        "/engine/resources",
        tags=["engine"],
        summary="Process memory, CPU, fds and threads against engine.limits; what is shed",
        dependencies=read_deps,
        responses=_problems(*read_codes, 503),
    )
    async def resources() -> dict[str, Any]:
        found: dict[str, Any] = await call(engine.resources)
        return found

    @app.put(
        "/engine/limits",
        tags=["engine"],
        summary="Replace engine.limits at runtime (shedding and restoring follow at the next check)",
        dependencies=write_deps,
        responses=_problems(400, *auth_codes, 413, 422, 503),
        openapi_extra=_json_body("LimitsConfig", "application/json"),
    )
    async def put_limits(request: Request) -> dict[str, Any]:
        data = await _read_json(request)
        if not isinstance(data, dict):
            raise _invalid([FieldError(field="(root)", message="must be a JSON object (engine.limits)")])
        try:
            limits = LimitsConfig.model_validate_json(json.dumps(data), strict=True)
        except ValidationError as exc:
            raise _invalid(_field_errors(exc)) from None
        await call(engine.set_limits, limits)
        log.info("engine limits replaced through the API")
        found: dict[str, Any] = await call(engine.resources)
        return found

    @app.get(
        "/streams/{stream_id}/events",
        response_model=list[EventInfo],
        tags=["streams"],
        summary="The stream's recent state transitions, oldest first (a bounded ring)",
        dependencies=read_deps,
        responses=_problems(*read_codes, 404, 503),
    )
    async def stream_events(stream_id: str) -> list[dict[str, Any]]:
        events = await call(engine.events, stream_id)
        scrubbed: list[dict[str, Any]] = _scrub([event.as_dict() for event in events])
        return scrubbed

    @app.get(
        "/streams/{stream_id}/recordings",
        response_model=list[RecordingInfo],
        tags=["streams"],
        summary="Recorded files of the stream, optionally within [from, to] (interim: a directory listing)",
        dependencies=read_deps,
        responses={
            **_problems(*read_codes, 404, 503),
            **{
                422: {
                    "description": "`from` or `to` is not a date-time",
                    "content": {PROBLEM_JSON: {"schema": {"$ref": REF + "Problem"}}},
                }
            },
        },
    )
    async def stream_recordings(
        stream_id: str,
        since: Annotated[
            datetime | None,
            Query(alias="from", description="ISO 8601 or UNIX time; files modified at or after it."),
        ] = None,
        until: Annotated[
            datetime | None,
            Query(alias="to", description="ISO 8601 or UNIX time; files modified at or before it."),
        ] = None,
    ) -> list[RecordingInfo]:
        spec = await call(engine.spec, stream_id)
        return await asyncio.to_thread(_list_recordings, spec, _utc(since), _utc(until))

    return app
