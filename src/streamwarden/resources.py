"""What the engine process uses right now: memory, CPU, open file descriptors, threads.

Read from /proc/self (Linux) rather than psutil: four small files, no extra dependency, and
the figures are exactly the kernel's. CPU is the process's user+system time over the wall time
since the previous sample, in percent of one core (200 % = both cores of this machine busy).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from streamwarden.policy.pressure import ResourceSample

_PROC = Path("/proc/self")


class ProcessSampler:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_cpu: float | None = None
        self._last_at = 0.0

    def sample(self, streams: int) -> ResourceSample:
        rss, threads = _status()
        now = self._clock()
        times = os.times()
        cpu = times.user + times.system
        percent = 0.0
        if self._last_cpu is not None and now > self._last_at:
            percent = 100.0 * (cpu - self._last_cpu) / (now - self._last_at)
        self._last_cpu, self._last_at = cpu, now
        return ResourceSample(
            rss_bytes=rss,
            cpu_percent=round(percent, 1),
            open_fds=_open_fds(),
            threads=threads,
            streams=streams,
        )


def _status() -> tuple[int, int]:
    rss = threads = 0
    try:
        for line in (_PROC / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    except OSError:
        pass
    return rss, threads


def _open_fds() -> int:
    try:
        return len(os.listdir(_PROC / "fd"))
    except OSError:
        return 0
