"""Command line: ``streamwarden validate|run|demo``.

Exit codes are part of the contract: 0 clean stop, 2 invalid config or usage,
3 the engine could not start, 130 interrupted twice (forced).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streamwarden.config import Config, ConfigError, load_config
from streamwarden.logs import setup_logging

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_START = 3
EXIT_FORCED = 130

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Keeps live video streams running.")
console = Console(stderr=True, soft_wrap=True)


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
    inactive = [s.id for s in parsed.streams if s.serve]
    console.print(f"[green]ok[/green] {config}: {len(parsed.streams)} stream(s)")
    if inactive:
        console.print(f"  note: serve: true is accepted but not active yet for {', '.join(inactive)}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML config file")],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
    stop_timeout: Annotated[float, typer.Option(help="seconds allowed for a graceful stop")] = 10.0,
) -> None:
    """Run the streams of CONFIG until SIGINT/SIGTERM."""
    setup_logging(log_level)
    try:
        parsed = load_config(config)
    except ConfigError as exc:
        for line in exc.errors:
            logging.getLogger("streamwarden").error("config %s: %s", exc.source, line)
        raise typer.Exit(EXIT_CONFIG) from None
    raise typer.Exit(run_engine(parsed, stop_timeout=stop_timeout))


def run_engine(config: Config, *, stop_timeout: float = 10.0) -> int:
    from streamwarden.engine import Engine

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
    try:
        engine = Engine(config.engine)
        engine.start()
        for spec in config.streams:
            engine.add_stream(spec)
    except Exception as exc:
        log.error("engine could not start: %s", exc)
        return EXIT_START
    log.info("running %d stream(s)", len(config.streams))
    while not stop.wait(0.5):
        pass
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


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="seconds to run")] = 60.0,
    workdir: Annotated[Path | None, typer.Option(help="where clips and recordings go")] = None,
) -> None:
    """Four streams (two looping files, two RTSP) with faults injected on a schedule."""
    from streamwarden.demo import run_demo

    raise typer.Exit(run_demo(duration=duration, workdir=workdir))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_FORCED)


if __name__ == "__main__":
    main()
