"""Helpers shared by the bench processes: child handles, /proc accounting, ports, percentiles.

No GStreamer here: the runner imports this without ``gi``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was really measured."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.4999) - 1))
    return ordered[index]


# -- /proc accounting ---------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pids: Sequence[int]) -> list[int]:
    """``pids`` and all their descendants that are alive now."""
    children = _children_map()
    out: list[int] = []
    stack = list(pids)
    seen: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole thread group (every thread, dead ones included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")": state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in process_tree(pids))


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_peak_rss_mib(pids: Sequence[int]) -> float:
    """VmHWM (peak resident set) summed over the tree, MiB."""
    return sum(_status_kib(pid, "VmHWM") for pid in process_tree(pids)) / 1024


def tree_threads(pids: Sequence[int]) -> int:
    return sum(_status_kib(pid, "Threads") for pid in process_tree(pids))


@dataclass
class TreeSample:
    """CPU of a process tree at one instant: per thread (schedstat, ns precision) and per process."""

    threads: dict[tuple[int, int], tuple[str, float]]  # (pid, tid) -> (thread name, CPU seconds)
    procs: dict[int, float]  # pid -> utime + stime of the thread group (10 ms ticks, dead threads too)


def sample_tree(pids: Sequence[int]) -> TreeSample:
    threads: dict[tuple[int, int], tuple[str, float]] = {}
    procs: dict[int, float] = {}
    for pid in process_tree(pids):
        procs[pid] = cpu_seconds(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                run_ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            threads[(pid, int(tid))] = (name, run_ns / 1e9)
    return TreeSample(threads=threads, procs=procs)


def tree_cpu_delta(before: TreeSample, after: TreeSample) -> float:
    """CPU seconds the tree used between two samples.

    The sum over threads is exact to the nanosecond but misses threads that ended in between;
    the per-process figure (10 ms ticks) includes them. The thread sum is used unless the
    process figure is clearly larger (a thread with real work ended).
    """
    precise = sum(cpu - before.threads.get(key, (name, 0.0))[1] for key, (name, cpu) in after.threads.items())
    coarse = sum(cpu - before.procs.get(pid, 0.0) for pid, cpu in after.procs.items())
    slack = 0.02 * max(1, len(after.procs)) + 0.03
    return coarse if coarse - precise > slack else max(0.0, precise)


def thread_groups_delta(before: TreeSample, after: TreeSample) -> dict[str, float]:
    """CPU seconds per thread name (digits folded to '#') between two samples."""
    groups: dict[str, float] = {}
    for key, (name, cpu) in after.threads.items():
        group = re.sub(r"\d+", "#", re.sub(r"s\d{3}", "<id>", name))
        groups[group] = groups.get(group, 0.0) + max(0.0, cpu - before.threads.get(key, (name, 0.0))[1])
    return groups


@dataclass
class MachineCpu:
    """Whole-machine busy and total jiffies from /proc/stat."""

    busy: int
    total: int

    @classmethod
    def read(cls) -> MachineCpu:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])  # guest time is already inside user
        return cls(busy=total - idle, total=total)

    def busy_fraction_since(self, earlier: MachineCpu) -> float:
        total = self.total - earlier.total
        return (self.busy - earlier.busy) / total if total > 0 else 0.0


# -- child processes ----------------------------------------------------------------------------
class ChildError(RuntimeError):
    pass


class JsonChild:
    """A child that prints JSON lines on stdout (and optionally takes commands on stdin).

    Every read is bounded by a timeout; ``close`` ends the child for sure (signal, wait, SIGKILL).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        stdin: bool = False,
        env: dict[str, str] | None = None,
        name: str = "child",
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            bufsize=0,
        )
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, max_chars: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-max_chars:].decode("utf-8", "replace")
        except OSError:
            return ""

    def read_json(self, timeout: float, prefix: str = "") -> dict[str, Any]:
        """The next stdout line starting with ``prefix``, parsed as JSON (after the prefix)."""
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buf:
                    raw, self._buf = self._buf.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").strip()
                    if line.startswith(prefix) and line[len(prefix) :].lstrip().startswith("{"):
                        data: dict[str, Any] = json.loads(line[len(prefix) :])
                        return data
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildError(f"{self.name}: no reply within {timeout:.1f} s\n{self.log_tail()}")
                if not sel.select(min(remaining, 0.5)):
                    continue
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    code = self.proc.wait(timeout=5)
                    raise ChildError(f"{self.name}: exited with {code}\n{self.log_tail()}")
                self._buf += chunk

    def command(self, line: str, timeout: float = 10.0) -> dict[str, Any]:
        stdin = self.proc.stdin
        if stdin is None:
            raise ChildError(f"{self.name} takes no commands")
        try:
            stdin.write((line + "\n").encode())
            stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ChildError(f"{self.name}: cannot send {line!r}: {exc}\n{self.log_tail()}") from exc
        return self.read_json(timeout, prefix="REPLY ")

    def send_signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.alive():
            self.send_signal(signum)
            if self.wait(timeout) is None:
                self.kill()
        code = self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        with contextlib.suppress(OSError):
            self._log.close()
        return code


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], signum: int, timeout: float) -> list[int]:
    """Signal every process, wait for all (one shared deadline), SIGKILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return [proc.wait(timeout=10) for proc in procs]
