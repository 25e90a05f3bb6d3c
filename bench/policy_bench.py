"""``make bench-policy``: latency and memory of the pure recovery-policy decisions (no GStreamer).

These run on the engine's supervisor thread on every event or tick, so they must stay far below
a frame interval even with 1,000 streams. Measured with time.perf_counter around each call
(the ~0.1 µs timer overhead is included), on fake clocks so every run sees the same states:

(a) CircuitBreaker: ``allow_attempt()`` + ``record_failure()``/``record_success()``;
(b) Correlator.analyze() with 1,000 streams on 50 hosts (5 /24 networks), 0 / 10 / 100 % failing,
    each failing stream failing again every second (10 ticks);
(c) Correlator memory with those 1,000 streams all failing (tracemalloc, current and peak);
(d) StrategySelector.choose over simulated outages;
(e) ErrorRateDetector.update with 1,000 stream keys + 50 host keys, 10 % of streams erroring.

Prints a markdown table and writes it to bench/results/policy.md.

    .venv/bin/python bench/policy_bench.py            # ~20 s
    .venv/bin/python bench/policy_bench.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import percentile

from streamwarden.policy import (
    BreakerPolicy,
    Category,
    CircuitBreaker,
    Correlator,
    ErrorRateDetector,
    Strategy,
    StrategySelector,
    keys_for_url,
)

RESULTS = Path(__file__).resolve().parent / "results"
STREAMS = 1000
HOSTS = 50
MB = 1_000_000


class _Clock:
    """A fake monotonic clock, so windows and holds behave the same on every run."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Row:
    what: str
    samples: str
    p50: str
    p99: str
    max: str
    target: str
    passed: bool


def _fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


def _latency_row(what: str, times: list[float], target_seconds: float, target: str) -> Row:
    p99 = percentile(times, 99)
    return Row(
        what=what,
        samples=f"{len(times):,}",
        p50=_fmt_seconds(percentile(times, 50)),
        p99=_fmt_seconds(p99),
        max=_fmt_seconds(max(times)),
        target=target,
        passed=p99 < target_seconds,
    )


def _stream_ids() -> list[str]:
    return [f"cam{i:04d}" for i in range(STREAMS)]


def _url(i: int) -> str:
    host = i % HOSTS  # 20 cameras per host, hosts 10.0.<net>.<n>: 10 hosts per /24
    return f"rtsp://admin:pw{host}@10.0.{host // 10}.{host % 10 + 1}:554/stream{i}"


# -- (a) ------------------------------------------------------------------------------------------
def bench_breaker(iterations: int) -> Row:
    clock = _Clock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=5, open_seconds=1.0), clock)
    rng = random.Random(1)
    outcomes = [rng.random() < 0.7 for _ in range(iterations)]  # 70 % failures: every state is visited
    times = []
    perf = time.perf_counter
    for failed in outcomes:
        clock.now += 0.1
        t0 = perf()
        if breaker.allow_attempt():
            if failed:
                breaker.record_failure()
            else:
                breaker.record_success()
        times.append(perf() - t0)
    return _latency_row(
        "(a) CircuitBreaker: allow_attempt + record_failure/record_success", times, 1e-3, "< 1 ms"
    )


# -- (b) ------------------------------------------------------------------------------------------
def _failing_correlator(fraction: float, seed: int = 2) -> tuple[Correlator, _Clock, list[str], list[str]]:
    clock = _Clock()
    corr = Correlator(clock=clock)
    ids = _stream_ids()
    for i, stream_id in enumerate(ids):
        corr.register(stream_id, keys_for_url(_url(i)))
    failing = sorted(random.Random(seed).sample(ids, round(fraction * len(ids))))
    return corr, clock, ids, failing


def bench_correlation(fraction: float, ticks: int) -> Row:
    corr, clock, _ids, failing = _failing_correlator(fraction)
    network = str(Category.NETWORK)
    times = []
    perf = time.perf_counter
    for tick in range(ticks):
        clock.now += 0.1
        for stream_id in failing[tick % 10 :: 10]:  # each failing stream fails once a second
            corr.record_failure(stream_id, network)
        t0 = perf()
        corr.analyze()
        times.append(perf() - t0)
    incidents = len(corr.open_incidents())
    return _latency_row(
        f"(b) Correlator.analyze, {STREAMS:,} streams / {HOSTS} hosts, {fraction:.0%} failing "
        f"({incidents} incidents open)",
        times,
        10e-3,
        "< 10 ms",
    )


# -- (c) ------------------------------------------------------------------------------------------
def bench_memory(ticks: int) -> Row:
    network = str(Category.NETWORK)
    tracemalloc.start()
    try:
        corr, clock, ids, _ = _failing_correlator(1.0)
        for _ in range(ticks):
            clock.now += 0.5
            for stream_id in ids:
                corr.record_failure(stream_id, network)
            corr.analyze()
            for stream_id in ids:
                corr.pace(stream_id, 1.0)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Row(
        what=f"(c) Correlator memory, {STREAMS:,} streams failing continuously (tracemalloc; "
        "keys and ids included)",
        samples=f"{ticks * STREAMS:,} failures",
        p50=f"current {current / MB:.2f} MB",
        p99="-",
        max=f"peak {peak / MB:.2f} MB",
        target="< 1 MB",
        passed=peak < MB,
    )


# -- (d) ------------------------------------------------------------------------------------------
def bench_strategy(outages: int) -> Row:
    rng = random.Random(3)
    categories = [str(c) for c in Category] + ["unknown"]
    # A stream where switching transport usually works and plain reconnects rarely do.
    works = {
        Strategy.RECONNECT_NOW: 0.2,
        Strategy.SWITCH_TRANSPORT: 0.8,
        Strategy.RECONNECT: 0.3,
        Strategy.RESTART: 0.5,
    }
    selector = StrategySelector(clock=_Clock())
    applicable = frozenset(Strategy)
    times = []
    perf = time.perf_counter
    for _ in range(outages):
        selector.begin_outage(rng.choice(categories))
        for _attempt in range(10):
            t0 = perf()
            strategy = selector.choose(applicable)
            times.append(perf() - t0)
            if rng.random() < works[strategy]:
                selector.attempt_succeeded(1.0)
                break
            selector.attempt_failed()
    return _latency_row("(d) StrategySelector.choose", times, 1e-3, "< 1 ms (ours)")


# -- (e) ------------------------------------------------------------------------------------------
def bench_error_rate(ticks: int) -> Row:
    clock = _Clock()
    detector = ErrorRateDetector(clock=clock)
    rng = random.Random(4)
    ids = _stream_ids()
    erroring = rng.sample(range(STREAMS), STREAMS // 10)  # 12 errors a minute each, above the 6 to raise
    times = []
    perf = time.perf_counter
    warmup = 60  # one full window first, so the timed ticks see a steady state
    for tick in range(warmup + ticks):
        clock.now += 1.0
        noise = rng.sample(range(STREAMS), STREAMS // 100)  # and a few one-off errors anywhere
        for i in [*erroring[tick % 5 :: 5], *noise]:
            detector.record(f"stream:{ids[i]}")
            detector.record(f"host:{i % HOSTS}")
        t0 = perf()
        detector.update()
        elapsed = perf() - t0
        if tick >= warmup:
            times.append(elapsed)
    return _latency_row(
        f"(e) ErrorRateDetector.update, {STREAMS:,} stream + {HOSTS} host keys, 10 % of streams "
        f"erroring + noise ({len(detector.active())} alarms, {len(detector)} keys tracked)",
        times,
        10e-3,
        "< 10 ms (ours)",
    )


def measure(quick: bool = False, progress: Callable[[str], None] | None = None) -> list[Row]:
    """Run every measurement; ``quick`` cuts the iteration counts by 10 (a smoke run)."""
    scale = 10 if quick else 1
    steps: list[Callable[[], Row]] = [
        lambda: bench_breaker(200_000 // scale),
        lambda: bench_correlation(0.0, 1000 // scale),
        lambda: bench_correlation(0.1, 1000 // scale),
        lambda: bench_correlation(1.0, 1000 // scale),
        lambda: bench_memory(60),
        lambda: bench_strategy(20_000 // scale),
        lambda: bench_error_rate(300 // scale),
    ]
    rows = []
    for step in steps:
        row = step()
        rows.append(row)
        if progress is not None:
            progress("   " + _line(row))
    return rows


def _line(r: Row) -> str:
    result = "pass" if r.passed else "**FAIL**"
    return f"| {r.what} | {r.samples} | {r.p50} | {r.p99} | {r.max} | {r.target} | {result} |"


def markdown(rows: list[Row]) -> str:
    """The table, with a line saying what was measured where."""
    lines = [
        f"Python {platform.python_version()}, {platform.machine()}, one thread; fake clocks. "
        "Pass = p99 below target (latency) or peak below target (memory).",
        "",
        "| Measurement | Samples | p50 | p99 | max | Target | Result |",
        "|---|---|---|---|---|---|---|",
    ]
    lines.extend(_line(r) for r in rows)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10x fewer iterations: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "policy.md")
    args = parser.parse_args(argv)
    rows = measure(quick=args.quick, progress=lambda line: print(line, flush=True))
    text = "# Recovery-policy micro-benchmark" + (" (--quick)" if args.quick else "") + "\n\n"
    text += markdown(rows) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(text)
    print(f"written: {args.out}")
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
