"""API latency while N looping file streams run: p50/p99 per request kind.

Starts a real ``streamwarden run`` (engine + uvicorn) on a free loopback port with N file streams,
waits until every stream plays, then times requests from this process with one keep-alive
client (sequential) and with several threads at once (concurrent). Loopback only, bounded.

    .venv/bin/python bench/api_latency.py [--streams 32] [--requests 300] [--threads 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from streamwarden.media.clip import ensure_test_clip
from streamwarden.testing.camera import free_port

TOKEN = "bench-token"


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def timed(func: Callable[[], httpx.Response], count: int, expect: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = func()
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != expect:
            raise SystemExit(f"unexpected {response.status_code}: {response.text[:300]}")
    return samples


def row(name: str, samples: list[float]) -> str:
    return (
        f"| {name} | {len(samples)} | {statistics.median(samples):.1f} | {percentile(samples, 99):.1f} "
        f"| {max(samples):.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sw-api-bench-"))
    clip = ensure_test_clip(workdir / "clip.mp4", seconds=4.0)
    port = free_port()
    ids = [f"cam{i:02d}" for i in range(args.streams)]
    config = workdir / "bench.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "api": {"host": "127.0.0.1", "port": port},
                "engine": {"reconnect_budget": {"rate_per_second": 1000, "burst": 1000}},
                "streams": [{"id": i, "source": {"type": "file", "path": str(clip)}} for i in ids],
            }
        )
    )
    env = {**os.environ, "STREAMWARDEN_API_TOKEN": TOKEN}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamwarden.cli", "run", str(config), "--log-level", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "server.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    streams = client.get("/streams").json()
                    if sum(s["state"] == "PLAYING" for s in streams) == len(ids):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"streams never all played; see {workdir / 'server.log'}")
                time.sleep(0.2)
            time.sleep(2)  # let fps settle
            n = args.requests
            counter = iter(range(10**9))
            results = {
                "GET /healthz": timed(lambda: client.get("/healthz"), n, 200),
                "GET /streams/{id}": timed(
                    lambda: client.get(f"/streams/{ids[next(counter) % len(ids)]}"), n, 200
                ),
                f"GET /streams ({len(ids)} streams)": timed(lambda: client.get("/streams"), n, 200),
                "GET /metrics": timed(lambda: client.get("/metrics"), max(20, n // 3), 200),
                "PATCH /streams/{id} (recovery)": timed(
                    lambda: client.patch(
                        f"/streams/{ids[next(counter) % len(ids)]}",
                        json={"recovery": {"stall_timeout_seconds": 5 + next(counter) % 2}},
                    ),
                    max(20, n // 3),
                    200,
                ),
            }
            add_samples: list[float] = []
            remove_samples: list[float] = []
            spec = {"id": "extra", "source": {"type": "file", "path": str(clip)}}
            for _ in range(max(10, n // 10)):
                add_samples += timed(lambda: client.post("/streams", json=spec), 1, 201)
                remove_samples += timed(lambda: client.delete("/streams/extra"), 1, 204)
            results["POST /streams (file)"] = add_samples
            results["DELETE /streams/{id}"] = remove_samples

        concurrent: list[float] = []
        lock = threading.Lock()

        def worker(offset: int) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=10) as own:
                samples = timed(lambda: own.get(f"/streams/{ids[offset % len(ids)]}"), n, 200)
            with lock:
                concurrent.extend(samples)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results[f"GET /streams/{{id}}, {args.threads} clients at once"] = concurrent

        print(f"API latency, {len(ids)} file streams playing, loopback, bearer auth on (ms)\n")
        print("| request | n | p50 | p99 | max |\n|---|---|---|---|---|")
        for name, samples in results.items():
            print(row(name, samples))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
