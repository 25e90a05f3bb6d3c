"""Configuration: the YAML file operators write, validated by pydantic.

The names here are a contract operators script against (see the README): keep them.
Every model forbids unknown keys so a typo is an error naming the field, not a silently
ignored setting.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from streamwarden.policy.backoff import BackoffPolicy, JitterMode
from streamwarden.policy.breaker import BreakerPolicy
from streamwarden.policy.classify import Rule, rule_from_mapping
from streamwarden.policy.quarantine import QuarantinePolicy
from streamwarden.recording.naming import DEFAULT_FILE_TEMPLATE, validate_template
from streamwarden.redact import redact

STREAM_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _no_control_chars(value: str) -> str:
    """A NUL cannot reach the OS, and a newline in a path or URL forges log lines: refused."""
    if _CONTROL_CHARS.search(value):
        raise ValueError("must not contain control characters (NUL, newline, tab, ...)")
    return value


PathText = Annotated[str, Field(min_length=1), AfterValidator(_no_control_chars)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Transport(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    AUTO = "auto"


class RecordFormat(StrEnum):
    MKV = "mkv"
    MP4 = "mp4"


class FileSource(_Model):
    """A local MP4/MKV/TS file played in a seamless loop, as if it were a live camera."""

    type: Literal["file"]
    path: PathText


class RtspSource(_Model):
    """An RTSP camera; credentials may be in the URI or in the fields."""

    type: Literal["rtsp"]
    uri: str
    transport: Transport = Transport.AUTO
    username: str | None = None
    password: SecretStr | None = None
    latency_ms: int = Field(default=200, ge=0, le=10_000)
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @field_validator("uri")
    @classmethod
    def _rtsp_uri(cls, value: str) -> str:
        parts = urlsplit(_no_control_chars(value))
        if parts.scheme not in ("rtsp", "rtsps", "rtspt") or not parts.hostname:
            raise ValueError("must be an rtsp://host[:port]/path URL")
        _check_port(parts.port if _port_is_numeric(value) else -1)
        return value


class HttpSource(_Model):
    """An MP4/MKV/MPEG-TS resource over HTTP(S); reconnected whenever it ends or fails."""

    type: Literal["http"]
    uri: str
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @field_validator("uri")
    @classmethod
    def _http_uri(cls, value: str) -> str:
        parts = urlsplit(_no_control_chars(value))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s)://host[:port]/path URL")
        _check_port(parts.port if _port_is_numeric(value) else -1)
        return value


def _port_is_numeric(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return True


def _check_port(port: int | None) -> None:
    if port is not None and not 0 < port < 65536:
        raise ValueError("has an invalid port")


SourceSpec = Annotated[FileSource | RtspSource | HttpSource, Field(discriminator="type")]


class BackoffConfig(_Model):
    initial_seconds: float = Field(default=1.0, gt=0, le=3600)
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    max_seconds: float = Field(default=60.0, gt=0, le=86_400)
    jitter: JitterMode = JitterMode.FULL
    max_attempts: int | None = Field(default=None, ge=1)
    reset_after_seconds: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _cap_not_below_initial(self) -> BackoffConfig:
        if self.max_seconds < self.initial_seconds:
            raise ValueError("max_seconds must be >= initial_seconds")
        return self

    def to_policy(self) -> BackoffPolicy:
        return BackoffPolicy(
            initial_seconds=self.initial_seconds,
            multiplier=self.multiplier,
            max_seconds=self.max_seconds,
            jitter=self.jitter,
            max_attempts=self.max_attempts,
            reset_after_seconds=self.reset_after_seconds,
        )


class BreakerConfig(_Model):
    failure_threshold: int = Field(default=5, ge=1, le=1000)
    open_seconds: float = Field(default=30.0, gt=0, le=86_400)
    open_multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    max_open_seconds: float = Field(default=600.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _cap_not_below_hold(self) -> BreakerConfig:
        if self.max_open_seconds < self.open_seconds:
            raise ValueError("max_open_seconds must be >= open_seconds")
        return self

    def to_policy(self) -> BreakerPolicy:
        return BreakerPolicy(
            failure_threshold=self.failure_threshold,
            open_seconds=self.open_seconds,
            open_multiplier=self.open_multiplier,
            max_open_seconds=self.max_open_seconds,
        )


class QuarantineConfig(_Model):
    trips: int = Field(default=3, ge=1, le=1000)
    window_seconds: float = Field(default=600.0, gt=0)
    quarantine_seconds: float = Field(default=1800.0, gt=0)

    def to_policy(self) -> QuarantinePolicy:
        return QuarantinePolicy(
            trips=self.trips,
            window_seconds=self.window_seconds,
            quarantine_seconds=self.quarantine_seconds,
        )


StrategyName = Literal["reconnect", "reconnect_now", "switch_transport", "restart"]


class RecoveryConfig(_Model):
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)
    # No new frame for this long while connected -> STALLED -> recovery.
    stall_timeout_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Adaptive recovery: per error category, the strategies to try in order (the engine learns
    # which works for this stream and prefers it); unset categories use the built-in order.
    adaptive: bool = True
    strategies: dict[str, list[StrategyName]] = Field(default_factory=dict)
    strategy_min_trials: int = Field(default=2, ge=1, le=100)


class DegradedConfig(_Model):
    """When a stream that still plays is marked DEGRADED; a figure above its maximum degrades it.

    ``null`` disables a check. Transport figures (RTSP only) come from RTP/RTCP statistics over
    ``window_seconds``; the stream is PLAYING again after ``clear_after_seconds`` below all of them.
    """

    max_loss_percent: float | None = Field(default=2.0, ge=0, le=100)
    max_jitter_ms: float | None = Field(default=50.0, ge=0)
    max_late_percent: float | None = Field(default=2.0, ge=0, le=100)
    max_rtt_ms: float | None = Field(default=None, ge=0)
    # Frame rate below this fraction of the nominal rate (the caps', else learned) degrades.
    min_fps_ratio: float | None = Field(default=0.5, ge=0, le=1)
    # Timestamp discontinuities, jumps or corrupt frames per minute (seen by media sampling).
    max_media_errors_per_minute: float | None = Field(default=6.0, ge=0)
    # Audio arriving this much earlier or later than video for the same media time (sampled).
    max_av_drift_ms: float | None = Field(default=1000.0, ge=0)
    window_seconds: float = Field(default=10.0, gt=0, le=3600)
    clear_after_seconds: float = Field(default=5.0, ge=0, le=3600)


class HealthConfig(_Model):
    degraded: DegradedConfig = Field(default_factory=DegradedConfig)
    # Media checks (timestamps, flags, frame rate) look at every frame for this long ...
    media_sample_seconds: float = Field(default=1.0, ge=0, le=60)
    # ... once per this interval: per-frame Python is costly, so media health is sampled. 0: off.
    media_sample_interval_seconds: float = Field(default=10.0, ge=0, le=3600)
    # Fixed nominal frame rate; unset: the caps' rate, else learned from the first seconds.
    nominal_fps: float | None = Field(default=None, gt=0, le=1000)


class RecordConfig(_Model):
    """Per-stream recording. Retention and disk-guard fields left unset fall back to ``recording:``."""

    dir: PathText
    format: RecordFormat = RecordFormat.MKV
    segment_seconds: float = Field(default=60.0, gt=0, le=86_400)
    segment_bytes: int | None = Field(default=None, gt=0)
    # strftime-style (UTC segment start) plus {stream_id}; relative to dir; the extension is added.
    file_template: str = DEFAULT_FILE_TEMPLATE
    max_age_seconds: float | None = Field(default=None, gt=0)
    max_total_bytes: int | None = Field(default=None, gt=0)
    min_free_bytes: int | None = Field(default=None, ge=0)
    min_free_percent: float | None = Field(default=None, ge=0, le=100)

    @field_validator("file_template")
    @classmethod
    def _template_stays_inside_dir(cls, value: str) -> str:
        return validate_template(value)


class RecordingConfig(_Model):
    """Engine-wide recording settings: the segment index, global retention, disk guard, retries."""

    # One SQLite index for every stream; unset: ``<record.dir>/segments.sqlite3`` per directory.
    index_path: str | None = None
    max_total_bytes: int | None = Field(default=None, gt=0)
    max_age_seconds: float | None = Field(default=None, gt=0)
    # Below this much free space on a recording's file system that recorder pauses.
    min_free_bytes: int | None = Field(default=256 * 1024 * 1024, ge=0)
    min_free_percent: float | None = Field(default=None, ge=0, le=100)
    # How often the disk guard and retention run (from the engine tick, off the loop thread).
    check_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Backoff between retries of a recorder that failed to write (the ingest is never touched).
    retry: BackoffConfig = Field(
        default_factory=lambda: BackoffConfig(initial_seconds=1.0, max_seconds=60.0, reset_after_seconds=60.0)
    )


class StreamSpec(_Model):
    id: str = Field(pattern=STREAM_ID_PATTERN)
    source: SourceSpec
    serve: bool = False
    record: RecordConfig | None = None
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    # Under resource pressure lower priorities are shed first (higher number = more important).
    priority: int = Field(default=0, ge=-1000, le=1000)
    enabled: bool = True


class ApiConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, lt=65536)
    token: SecretStr | None = None
    # GET endpoints (and /metrics) answer without a token; changes still need it.
    read_only_open: bool = False


class OutageMode(StrEnum):
    HOLD = "hold"  # send nothing while the source is down; clients stay connected
    SLATE = "slate"  # send a "signal lost" still at ~1 fps so players do not time out


class RtspAuthMethod(StrEnum):
    BASIC = "basic"
    DIGEST = "digest"


class RtspUser(_Model):
    username: str = Field(min_length=1, max_length=128, pattern=r"^[^:\s]+$")
    password: SecretStr


class RtspServerConfig(_Model):
    host: str = "0.0.0.0"
    port: int = Field(default=8554, ge=0, lt=65536)  # 0: any free port (see Engine.rtsp_port)
    max_clients: int = Field(default=64, ge=1, le=10_000)
    max_clients_per_stream: int = Field(default=16, ge=1, le=10_000)
    # A client that sends nothing (no RTCP, no keep-alive request) is dropped after this.
    session_timeout_seconds: int = Field(default=60, ge=5, le=3600)
    # How long a DESCRIBE waits for the first frame of a stream that has never played (then 503).
    describe_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    outage: OutageMode = OutageMode.HOLD
    # No frame for this long counts as an outage (slate starts, describe() says so).
    outage_after_seconds: float = Field(default=2.0, gt=0, le=60)
    # Empty (and no STREAMWARDEN_RTSP_USER/_PASSWORD in the environment): no authentication.
    users: list[RtspUser] = Field(default_factory=list)
    # One scheme (gst-rtsp-server's Python binding cannot offer both): digest keeps passwords
    # off the wire; basic for clients that know nothing else.
    auth_method: RtspAuthMethod = RtspAuthMethod.DIGEST


class ReconnectBudgetConfig(_Model):
    """Global token bucket: caps how many streams may (re)connect per second."""

    rate_per_second: float = Field(default=10.0, gt=0, le=10_000)
    burst: int = Field(default=10, ge=1, le=10_000)


class LimitsConfig(_Model):
    """Process limits; over one, load is shed by stream priority (README "Resource pressure").

    Unset limits are not watched. Pressure ends when every figure is below limit x clear_ratio.
    """

    max_streams: int | None = Field(default=None, ge=1, le=100_000)
    max_memory_mb: float | None = Field(default=None, gt=0, le=1_000_000_000)
    max_cpu_percent: float | None = Field(default=None, gt=0, le=1_000_000)
    max_open_fds: int | None = Field(default=None, ge=1, le=1_000_000_000)
    max_threads: int | None = Field(default=None, ge=1, le=1_000_000_000)
    clear_ratio: float = Field(default=0.9, gt=0, le=1)
    check_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    # One shedding (or restoring) step at most this often, so each step's effect is measured.
    step_seconds: float = Field(default=2.0, ge=0, le=3600)


class CorrelationConfig(_Model):
    """Shared-cause incidents: streams sharing a host, network or credential failing together."""

    window_seconds: float = Field(default=30.0, gt=0, le=3600)
    min_streams: int = Field(default=3, ge=2, le=100_000)
    # When the group's probe stream is back, the others reconnect this far apart.
    release_spread_seconds: float = Field(default=0.05, ge=0, le=60)
    error_rate_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    error_rate_raise_per_minute: float = Field(default=6.0, gt=0)
    error_rate_clear_per_minute: float = Field(default=2.0, ge=0)


class EngineConfig(_Model):
    reconnect_budget: ReconnectBudgetConfig = Field(default_factory=ReconnectBudgetConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    correlation: CorrelationConfig = Field(default_factory=CorrelationConfig)
    # Extra classification rules, checked before the built-in table (see policy.classify.Rule).
    error_rules: list[dict[str, Any]] = Field(default_factory=list)
    # A pipeline whose NULL state change takes longer than this is abandoned (logged, counted).
    teardown_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    event_ring_size: int = Field(default=200, ge=10, le=100_000)

    @field_validator("error_rules")
    @classmethod
    def _rules_parse(cls, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, rule in enumerate(rules):
            try:
                rule_from_mapping(rule)
            except ValueError as exc:
                raise ValueError(f"rule {index}: {exc}") from exc
        return rules

    def rules(self) -> list[Rule]:
        return [rule_from_mapping(rule) for rule in self.error_rules]


class Config(_Model):
    api: ApiConfig = Field(default_factory=ApiConfig)
    rtsp_server: RtspServerConfig = Field(default_factory=RtspServerConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    recording: RecordingConfig = Field(default_factory=RecordingConfig)
    streams: list[StreamSpec] = Field(default_factory=list)

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, streams: list[StreamSpec]) -> list[StreamSpec]:
        seen: set[str] = set()
        for stream in streams:
            if stream.id in seen:
                raise ValueError(f"duplicate stream id {stream.id!r}")
            seen.add(stream.id)
        return streams


class ConfigError(Exception):
    """A config that cannot be used; ``errors`` holds one redacted line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("file", "rtsp", "http") and out.endswith("source"):
            continue  # discriminator tag: pydantic's own path noise
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


_SECRET_FIELDS = frozenset({"password", "token", "secret"})


def _redact_value(value: object) -> str:
    """repr() of a bad value, with URL credentials hidden even when the scheme is missing."""
    text = redact(repr(value))
    if isinstance(value, str) and "@" in value and "://" not in value:
        text = redact(repr("***@" + value.rsplit("@", 1)[1]))
    return text


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: ``field.path: message (got 'value')``, credentials redacted."""
    lines = []
    for error in exc.errors(include_url=False):
        where = _location(tuple(error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        shown = ""
        if error["type"] != "missing" and not isinstance(value, dict | list):
            secret = any(str(part).lower() in _SECRET_FIELDS for part in error["loc"])
            shown = " (got ***)" if secret else f" (got {_redact_value(value)})"
        lines.append(redact(f"{where}: {message}{shown}"))
    return lines


def parse_config(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(root): must be a mapping with api, rtsp_server, engine, streams"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def parse_stream_spec(data: Any, source: str = "stream") -> StreamSpec:
    try:
        return StreamSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping.

    PyYAML keeps the last value silently, so a second ``record:`` or ``password:`` left in by
    an edit would quietly replace the first. Keys a ``<<`` merge brings in may still be
    overridden: that is what merging is for.
    """


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key!r} (first given on line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str) -> Any:
    """Safe YAML with duplicate keys refused (yaml.YAMLError naming the key and its line)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; raises ConfigError naming every bad field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = load_yaml(text)
    except RecursionError:
        raise ConfigError(str(path), ["invalid YAML: nested too deeply"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"invalid YAML: {where}{redact(str(problem))}"]) from None
    config = parse_config(data, str(path))
    return resolve_relative_paths(config, path.parent)


def resolve_relative_paths(config: Config, base: Path) -> Config:
    """Relative file and recording paths are relative to the config file, not the cwd."""
    index_path = config.recording.index_path
    if index_path is not None and not Path(index_path).is_absolute():
        config.recording.index_path = str(base / index_path)
    for stream in config.streams:
        if isinstance(stream.source, FileSource) and not Path(stream.source.path).is_absolute():
            stream.source.path = str(base / stream.source.path)
        if stream.record is not None and not Path(stream.record.dir).is_absolute():
            stream.record.dir = str(base / stream.record.dir)
    return config


def rtsp_credentials(source: RtspSource) -> tuple[str | None, str | None, str]:
    """Split credentials from the URI; fields win over the URI. Returns (user, password, bare_uri)."""
    parts = urlsplit(source.uri)
    user = source.username or parts.username
    password = source.password.get_secret_value() if source.password else parts.password
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    bare = parts._replace(netloc=netloc).geturl()
    return user, password, bare


def redacted_spec(spec: StreamSpec) -> dict[str, Any]:
    """The spec as JSON-ready data with every credential hidden (for API, events, logs)."""
    data = spec.model_dump(mode="json")
    source = data.get("source", {})
    if source.get("password"):
        source["password"] = "***"
    for key in ("uri", "path"):
        if isinstance(source.get(key), str):
            source[key] = redact(source[key])
    return data
