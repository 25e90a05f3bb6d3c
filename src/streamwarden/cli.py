"""Command line: ``streamwarden validate|run|demo|chaos`` and the API clients ``status|add|remove|resume``.

Exit codes are part of the contract: 0 clean stop, 2 invalid config or usage,
3 the engine (or its API) could not start, 130 interrupted twice (forced).
The API clients exit 0 on success, 1 when the API refused or could not be reached,
2 for an unreadable input file.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import quote

import typer
import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from streamwarden.config import Config, ConfigError, load_config, load_yaml
from streamwarden.logs import setup_logging

if TYPE_CHECKING:
    import httpx

    from streamwarden.persist import PersistedStream, StateStore

EXIT_OK = 0
EXIT_API = 1
EXIT_CONFIG = 2
EXIT_START = 3
EXIT_FORCED = 130

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "STREAMWARDEN_URL"
TOKEN_ENV = "STREAMWARDEN_API_TOKEN"  # = api.TOKEN_ENV; not imported: api pulls in GStreamer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Keeps live video streams running.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="YAML config file")]) -> None:
    """Check a config file; prints every problem (field, value) and exits 2 if any."""
    try:
        parsed = load_config(config)
    except ConfigError as exc:
        console.print(f"[red]invalid config[/red] {exc.source}:")
        for line in exc.errors:
            console.print(f"  - {line}", markup=False, highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    served = [s.id for s in parsed.streams if s.serve]
    recorded = [s.id for s in parsed.streams if s.record is not None]
    console.print(f"[green]ok[/green] {config}: {len(parsed.streams)} stream(s)")
    if served:
        port = parsed.rtsp_server.port
        console.print(f"  re-served on RTSP port {port}: {', '.join(served)}", markup=False)
    if recorded:
        console.print(f"  recorded: {', '.join(recorded)}", markup=False)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML config file")],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON lines (with a stream field)")] = False,
    stop_timeout: Annotated[float, typer.Option(help="seconds allowed for a graceful stop")] = 10.0,
) -> None:
    """Run the streams of CONFIG and its REST API until SIGINT/SIGTERM.

    Streams come from CONFIG.state.json when it exists (changes made through the API),
    else from CONFIG.
    """
    setup_logging(log_level, json_lines=log_json)
    try:
        parsed = load_config(config)
    except ConfigError as exc:
        for line in exc.errors:
            logging.getLogger("streamwarden").error("config %s: %s", exc.source, line)
        raise typer.Exit(EXIT_CONFIG) from None
    raise typer.Exit(run_engine(parsed, stop_timeout=stop_timeout, config_path=config))


def _initial_streams(config: Config, store: StateStore | None) -> list[PersistedStream]:
    """The state file's streams when it is usable, else the config's (first start, or corrupt state)."""
    from streamwarden.persist import PersistedStream

    log = logging.getLogger("streamwarden")
    from_config = [PersistedStream(spec=spec) for spec in config.streams]
    if store is None:
        return from_config
    loaded = store.load()  # a corrupt file is logged and set aside there
    if loaded.streams is None:
        return from_config
    restored = {s.spec.id for s in loaded.streams}
    ignored = sorted(s.id for s in config.streams if s.id not in restored)
    if ignored:
        log.warning(
            "state file %s is the source of truth: config stream(s) %s are not in it and are not "
            "started (delete the state file to start from the config again)",
            store.path,
            ", ".join(ignored),
        )
    log.info("restoring %d stream(s) from %s", len(loaded.streams), store.path)
    return loaded.streams


def run_engine(config: Config, *, stop_timeout: float = 10.0, config_path: Path | None = None) -> int:
    """Engine on its own (GLib) thread, the API on asyncio in this (main) thread; signals stop both."""
    import uvicorn

    from streamwarden.api import InsecureApiError, create_app
    from streamwarden.engine import Engine
    from streamwarden.httpserver import server_config
    from streamwarden.persist import StateStore, restore_streams

    log = logging.getLogger("streamwarden")
    stop = threading.Event()
    forced = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            forced.set()
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    store = StateStore.for_config(config_path) if config_path is not None else None
    try:
        engine = Engine(config.engine, rtsp_server=config.rtsp_server, recording=config.recording)
        # Before any stream exists, so metrics and the state saver see every event.
        api = create_app(
            engine,
            config=config.api,
            state_store=store,
            # Absolute: the state file must not depend on the directory `run` was started from.
            base_dir=config_path.resolve().parent if config_path is not None else None,
        )
        engine.start()
    except InsecureApiError as exc:
        log.error("refusing to start: %s", exc)
        return EXIT_START
    except Exception as exc:
        log.error("engine could not start: %s", exc)
        return EXIT_START
    streams = _initial_streams(config, store)
    restore_streams(engine, streams)
    log.info("running %d stream(s)", len(engine.stream_ids()))

    server = uvicorn.Server(
        server_config(  # keep-alive, header size, head deadline and connection cap: httpserver.py
            api,
            config.api.host,
            config.api.port,
            log_config=None,  # records go through our handler: redacted, JSON when asked
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(stop_timeout)),
        )
    )

    async def _serve() -> None:
        # uvicorn owns SIGINT/SIGTERM while it serves and re-raises them to _on_signal after;
        # a signal that arrived before it started is seen here.
        async def _watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.1)
            server.should_exit = True

        watcher = asyncio.create_task(_watch())
        try:
            await server.serve()
        finally:
            watcher.cancel()

    api_failed = False
    try:
        asyncio.run(_serve())
    except SystemExit:  # uvicorn exits when it cannot listen (already logged why)
        api_failed = True
    if api_failed or not server.started:
        log.error("API could not listen on %s:%d: stopping", config.api.host, config.api.port)
        engine.stop(timeout=stop_timeout)
        return EXIT_START
    stop.set()
    return _stop_engine(engine, stop_timeout, forced)


def _stop_engine(engine: Any, stop_timeout: float, forced: threading.Event) -> int:
    log = logging.getLogger("streamwarden")
    started = time.monotonic()
    stopper = threading.Thread(target=engine.stop, kwargs={"timeout": stop_timeout}, daemon=True)
    stopper.start()
    while stopper.is_alive() and not forced.is_set() and time.monotonic() - started < stop_timeout + 2:
        stopper.join(0.1)
    if forced.is_set() or stopper.is_alive():
        log.error("forced stop")
        return EXIT_FORCED
    log.info("stopped")
    return EXIT_OK


# -- API clients -------------------------------------------------------------------------------------
UrlOption = Annotated[str, typer.Option("--url", envvar=URL_ENV, help="the API's base URL")]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar=TOKEN_ENV, show_default=False, help=f"bearer token (prefer ${TOKEN_ENV})"),
]
TimeoutOption = Annotated[float, typer.Option(help="seconds to wait for the API")]


def _api(
    method: str, url: str, path: str, token: str | None, timeout: float, *, body: Any = None
) -> httpx.Response:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
            return client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach the API at {url}[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(EXIT_API) from None


def _report(response: httpx.Response, what: str) -> None:
    """Prints the API's problem: status, detail and each field error."""
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    errors = problem.get("errors") or []
    # With field errors the title suffices: the detail repeats the first of them.
    summary = (problem.get("title") if errors else problem.get("detail")) or response.reason_phrase
    console.print(f"[red]{what}: {response.status_code}[/red] {summary}", highlight=False)
    for error in errors:
        console.print(f"  - {error.get('field')}: {error.get('message')}", markup=False, highlight=False)


def _refused(response: httpx.Response, what: str) -> NoReturn:
    _report(response, what)
    raise typer.Exit(EXIT_API)


def _stream_path(stream_id: str, suffix: str = "") -> str:
    return f"/streams/{quote(stream_id, safe='')}{suffix}"


def _age(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} s"


@app.command()
def status(url: UrlOption = DEFAULT_URL, token: TokenOption = None, timeout: TimeoutOption = 5.0) -> None:
    """A table of every stream from a running engine's API."""
    response = _api("GET", url, "/streams", token, timeout)
    if response.status_code != 200:
        _refused(response, "status failed")
    streams: list[dict[str, Any]] = response.json()
    table = Table(
        title=f"streamwarden at {url}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("stream", overflow="fold")  # an id is never cut short
    numeric = ("fps", "frame age", "recoveries")
    for column in ("state", *numeric, "breaker", "recorder", "clients"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for stream in sorted(streams, key=lambda s: str(s.get("id"))):
        health = stream.get("health") or {}
        recorder = stream.get("recorder")
        server = stream.get("server")
        table.add_row(
            str(stream.get("id")),
            str(stream.get("state")),
            f"{float(health.get('fps') or 0):.1f}",
            _age(health.get("last_frame_age_seconds")),
            str(health.get("recoveries_total", 0)),
            str((stream.get("breaker") or {}).get("state", "-")),
            "-" if recorder is None else ("writing" if recorder.get("active") else "idle"),
            "-" if server is None else str(server.get("clients", 0)),
        )
    out.print(table)
    if not streams:
        out.print("no streams")


def _specs_from_file(path: Path) -> list[Any]:
    """One spec, a list of specs, or a config-like mapping with ``streams``; YAML or JSON."""
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        console.print(f"[red]cannot read {path}[/red]: {exc}", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    if isinstance(data, dict) and "streams" in data and "id" not in data:
        data = data["streams"]
    specs = data if isinstance(data, list) else [data]
    if not specs or not all(isinstance(spec, dict) for spec in specs):
        console.print(f"[red]{path}[/red]: expected a stream spec, a list of them, or streams: [...]")
        raise typer.Exit(EXIT_CONFIG)
    return specs


@app.command()
def add(
    file: Annotated[Path, typer.Argument(help="YAML or JSON: a stream spec, a list, or streams: [...]")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = 15.0,
) -> None:
    """Add the stream(s) of FILE through the API (specs exactly as in the config file)."""
    failed = 0
    for spec in _specs_from_file(file):
        response = _api("POST", url, "/streams", token, timeout, body=spec)
        if response.status_code == 201:
            info = response.json()
            out.print(f"added {info.get('id')} ({info.get('state')})", highlight=False)
            continue
        failed += 1
        _report(response, f"adding {spec.get('id', '?')} failed")
    if failed:
        raise typer.Exit(EXIT_API)


@app.command()
def remove(
    stream_id: Annotated[str, typer.Argument(metavar="ID", help="stream id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = 15.0,
) -> None:
    """Remove a stream through the API (its recording is closed cleanly)."""
    response = _api("DELETE", url, _stream_path(stream_id), token, timeout)
    if response.status_code != 204:
        _refused(response, f"removing {stream_id} failed")
    out.print(f"removed {stream_id}", highlight=False)


@app.command()
def resume(
    stream_id: Annotated[str, typer.Argument(metavar="ID", help="stream id")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = 15.0,
) -> None:
    """Take a stream out of quarantine (or FAILED) through the API and retry it now."""
    response = _api("POST", url, _stream_path(stream_id, "/resume"), token, timeout)
    if response.status_code != 200:
        _refused(response, f"resuming {stream_id} failed")
    out.print(f"resumed {stream_id} ({response.json().get('state')})", highlight=False)


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="seconds to run")] = 60.0,
    workdir: Annotated[Path | None, typer.Option(help="where clips and recordings go")] = None,
) -> None:
    """Four streams (two looping files, two RTSP) with faults injected on a schedule."""
    from streamwarden.demo import run_demo

    raise typer.Exit(run_demo(duration=duration, workdir=workdir))


@app.command()
def chaos(  # noqa: PLR0917 - typer options
    streams: Annotated[int, typer.Option(min=2, max=32, help="streams (half RTSP via fault proxies)")] = 8,
    duration: Annotated[float, typer.Option(min=5, max=3600, help="seconds of fault injection")] = 120.0,
    seed: Annotated[int, typer.Option(help="seed of the fault schedule")] = 1,
    report: Annotated[Path | None, typer.Option(help="write the markdown report here")] = None,
    churn_cycles: Annotated[int, typer.Option(min=0, max=100_000, help="add/remove cycles after")] = 0,
    workdir: Annotated[Path | None, typer.Option(help="keep clips, logs and recordings here")] = None,
) -> None:
    """Inject camera, network, media and engine faults on a seeded schedule; report what was lost.

    Exit 0 when every check passed (no frame lost outside outages, every file playable, no
    unhandled exception, every stream PLAYING at the end, no credential leaked), 1 otherwise.
    """
    from streamwarden.chaos import main_chaos

    raise typer.Exit(
        main_chaos(
            streams=streams,
            duration=duration,
            seed=seed,
            report_path=report,
            churn_cycles=churn_cycles,
            workdir=workdir,
        )
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_FORCED)


if __name__ == "__main__":
    main()
