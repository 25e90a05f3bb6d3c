"""``streamwarden run CONFIG`` as a child process: started, probed over its API, killed for real."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import yaml

from streamwarden.testing.camera import free_port


class EngineChild:
    """One ``streamwarden run`` child with its API on a free loopback port and JSON logs in a file."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        *,
        nofile: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config_path = workdir / "engine.yaml"
        self.log_path = workdir / "engine.log"
        data = dict(config)
        data["api"] = {**data.get("api", {}), "host": "127.0.0.1", "port": self.port}
        self.config_path.write_text(yaml.safe_dump(data))
        self.nofile = nofile
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        src = str(Path(__file__).resolve().parents[2] / "src")
        env = {**self.env, "PYTHONPATH": os.pathsep.join(p for p in (src, self.env.get("PYTHONPATH")) if p)}
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamwarden.cli", "run", str(self.config_path), "--log-json"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                preexec_fn=limit if nofile is not None else None,  # noqa: PLW1509 - only setrlimit
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"engine API not up within {timeout} s: {self.log_tail()}")
            time.sleep(0.1)

    def api(self, method: str, path: str, timeout: float = 10.0, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=timeout, **kwargs)

    def streams(self) -> dict[str, dict[str, Any]]:
        return {s["id"]: s for s in self.api("GET", "/streams").json()}

    def wait_playing(self, ids: list[str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            streams = self.streams()
            if all(streams.get(i, {}).get("state") == "PLAYING" for i in ids):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not PLAYING within {timeout} s: {streams}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or saved."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else 0
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def __enter__(self) -> Self:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
