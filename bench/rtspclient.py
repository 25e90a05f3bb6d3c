"""RTSP clients for the re-serve workload: one TCP-interleaved session per URL, frames counted.

A minimal RTSP/1.0 client on asyncio (DESCRIBE, SETUP interleaved=0-1, PLAY, GET_PARAMETER
keep-alives, TEARDOWN). It reads the interleaved stream in large chunks and counts RTP packets
and frames (the RTP marker bit closes an access unit); nothing is depacketised or decoded, so
one process holds many clients cheaply. Run as a child of the bench runner::

    python bench/rtspclient.py URL [URL ...]

stdout: ``READY {"playing": k}`` once every client played (or failed), then one ``REPLY {json}``
per ``stats`` line on stdin; SIGTERM or stdin EOF ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

KEEPALIVE_SECONDS = 15.0
REQUEST_TIMEOUT = 15.0


@dataclass
class ClientStats:
    url: str
    playing: bool = False
    frames: int = 0
    packets: int = 0
    bytes: int = 0
    error: str | None = None
    play_at: float | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class RtspError(RuntimeError):
    pass


class _Session:
    def __init__(self, url: str, stats: ClientStats) -> None:
        self.url = url
        self.stats = stats
        self.cseq = 0
        self.session: str | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buf = bytearray()

    async def _read_more(self) -> None:
        assert self.reader is not None
        chunk = await self.reader.read(262144)
        if not chunk:
            raise RtspError("connection closed by the server")
        self.buf += chunk

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> None:
        assert self.writer is not None
        self.cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self.cseq}", "User-Agent: sw-bench"]
        if self.session:
            lines.append(f"Session: {self.session}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        """The next RTSP response; interleaved data before it is consumed and counted."""
        while True:
            self._consume_interleaved()
            end = self.buf.find(b"\r\n\r\n")
            if self.buf[:4] == b"RTSP" and end >= 0:
                head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                headers = {}
                for line in head[1:]:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                while len(self.buf) < end + 4 + length:
                    await self._read_more()
                body = bytes(self.buf[end + 4 : end + 4 + length])
                del self.buf[: end + 4 + length]
                status = int(head[0].split()[1])
                return status, headers, body
            await self._read_more()

    async def request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        await self._send(method, url, headers or {})
        status, reply, body = await asyncio.wait_for(self._response(), REQUEST_TIMEOUT)
        if status != 200:
            raise RtspError(f"{method} {url}: {status}")
        return status, reply, body

    def _consume_interleaved(self) -> None:
        buf = self.buf
        stats = self.stats
        pos = 0
        size = len(buf)
        frames = packets = nbytes = 0
        while size - pos >= 4 and buf[pos] == 0x24:  # '$'
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            if size - pos < 4 + length:
                break
            if buf[pos + 1] == 0 and length >= 12:
                packets += 1
                nbytes += length
                if buf[pos + 5] & 0x80:
                    frames += 1
            pos += 4 + length
        if pos:
            del buf[:pos]
        stats.frames += frames
        stats.packets += packets
        stats.bytes += nbytes

    async def run(self, stop: asyncio.Event) -> None:
        parts = urlsplit(self.url)
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 554), REQUEST_TIMEOUT
        )
        try:
            _, headers, sdp = await self.request("DESCRIBE", self.url, {"Accept": "application/sdp"})
            base = headers.get("content-base", self.url)
            if not base.endswith("/"):
                base += "/"
            control = None
            in_video = False
            for line in sdp.decode("latin-1").splitlines():
                if line.startswith("m="):
                    in_video = line.startswith("m=video")
                elif in_video and line.startswith("a=control:"):
                    control = line.split(":", 1)[1].strip()
                    break
            if control is None:
                raise RtspError("no video control in the SDP")
            setup_url = control if control.startswith("rtsp://") else base + control
            _, headers, _ = await self.request(
                "SETUP", setup_url, {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}
            )
            self.session = headers.get("session", "").split(";")[0] or None
            await self.request("PLAY", base, {"Range": "npt=0.000-"})
            self.stats.playing = True
            self.stats.play_at = time.monotonic()
            next_keepalive = time.monotonic() + KEEPALIVE_SECONDS
            while not stop.is_set():
                if time.monotonic() >= next_keepalive:
                    await self._send("GET_PARAMETER", base, {})
                    next_keepalive = time.monotonic() + KEEPALIVE_SECONDS
                read = asyncio.ensure_future(self._read_more())
                waiter = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({read, waiter}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if read not in done:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RtspError):
                        await read
                    continue
                read.result()
                self._consume_interleaved()
                self._drop_responses()
            with contextlib.suppress(Exception):
                await self._send("TEARDOWN", base, {})
        finally:
            self.stats.playing = False
            if self.writer is not None:
                with contextlib.suppress(Exception):
                    self.writer.close()

    def _drop_responses(self) -> None:
        """Keep-alive replies arrive in the data: skip them."""
        while self.buf[:4] == b"RTSP":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n"):
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            self._consume_interleaved()


async def _client(url: str, stats: ClientStats, stop: asyncio.Event, started: asyncio.Event) -> None:
    deadline = time.monotonic() + 30
    while not stop.is_set():
        stats.attempts += 1
        try:
            session = _Session(url, stats)
            task = asyncio.ensure_future(session.run(stop))
            while not task.done() and not stats.playing:
                await asyncio.sleep(0.05)
            if stats.playing:
                started.set()
            await task
            return
        except Exception as exc:
            stats.error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.5)


async def _main(urls: list[str]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()

    async def watch_parent() -> None:  # the runner died: end with it
        while not stop.is_set():
            if os.getppid() != parent:
                stop.set()
            await asyncio.sleep(0.5)

    watcher = asyncio.ensure_future(watch_parent())
    stats = [ClientStats(url) for url in urls]
    started = [asyncio.Event() for _ in urls]
    tasks = [
        asyncio.ensure_future(_client(u, s, stop, e)) for u, s, e in zip(urls, stats, started, strict=True)
    ]

    def snapshot() -> dict[str, Any]:
        return {
            "t": time.monotonic(),
            "clients": {
                s.url: {
                    "frames": s.frames,
                    "packets": s.packets,
                    "bytes": s.bytes,
                    "playing": s.playing,
                    "error": s.error,
                    "attempts": s.attempts,
                }
                for s in stats
            },
        }

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not stop.is_set():
        if all(s.playing or t.done() for s, t in zip(stats, tasks, strict=True)):
            break
        await asyncio.sleep(0.1)
    print(
        "READY " + json.dumps({"playing": sum(s.playing for s in stats), "clients": len(stats)}), flush=True
    )

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not stop.is_set():
        line_task = asyncio.ensure_future(reader.readline())
        stop_task = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({line_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if line_task not in done:
            line_task.cancel()
            break
        line = line_task.result()
        if not line:
            break
        if line.strip() == b"stats":
            print("REPLY " + json.dumps(snapshot()), flush=True)
    stop.set()
    await asyncio.wait(tasks, timeout=5)
    watcher.cancel()
    print("DONE " + json.dumps(snapshot()), flush=True)
    return 0


def main() -> int:
    return asyncio.run(_main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
