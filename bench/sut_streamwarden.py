"""The system under test for the bench: ONE streamwarden engine process with N RTSP streams.

It runs what ``streamwarden run`` runs (the engine plus its REST API on uvicorn, 127.0.0.1, a
free port), records every stream to 10 s MKV segments and, with ``--serve``, re-serves every
stream from the engine's RTSP server. It prints one ``READY {json}`` line once every stream
plays (or the ready timeout passed), runs until SIGTERM/SIGINT (bounded by ``--max-seconds``),
then stops the engine (closing the recordings) and prints ``DONE {json}`` with per-stream
health figures::

    python bench/sut_streamwarden.py --base-url rtsp://127.0.0.1:PORT --streams 32 --record-dir DIR
        [--serve] [--events-file FILE] [--recovery JSON]

``--probe`` prints ``PROBE {"serve": bool, "api": bool}``: whether this checkout has RTSP
re-serving (``serve: true`` + ``Engine(rtsp_server=...)``) and the REST API.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("sut")
_out_lock = threading.Lock()


def emit(prefix: str, data: dict[str, Any]) -> None:
    with _out_lock:
        sys.stdout.write(f"{prefix} {json.dumps(data)}\n")
        sys.stdout.flush()


def stream_id(index: int) -> str:
    return f"s{index:03d}"


def probe() -> dict[str, bool]:
    serve = False
    api = False
    try:
        from streamwarden.config import StreamSpec
        from streamwarden.engine import Engine

        serve = "serve" in StreamSpec.model_fields and "rtsp_server" in inspect.signature(Engine).parameters
        if serve:
            from streamwarden.config import RtspServerConfig  # noqa: F401
            from streamwarden.media.rtspserver import RtspServer  # noqa: F401
    except Exception:
        serve = False
    try:
        from streamwarden.api import create_app  # noqa: F401
        from streamwarden.config import ApiConfig  # noqa: F401

        api = True
    except Exception:
        api = False
    return {"serve": serve, "api": api}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="streamwarden engine under test")
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--base-url", help="rtsp://127.0.0.1:PORT (mounts /cam0../camN-1)")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--record-dir", type=Path)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--no-api", action="store_true")
    parser.add_argument("--events-file", type=Path)
    parser.add_argument("--recovery", default=None, help="JSON of the streams' recovery config")
    parser.add_argument("--ready-timeout", type=float, default=90.0)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(message)s")
    if args.probe:
        emit("PROBE", probe())
        return 0
    if args.base_url is None or args.record_dir is None:
        print("--base-url and --record-dir are required", file=sys.stderr)
        return 2

    from streamwarden.config import EngineConfig, parse_stream_spec
    from streamwarden.engine import Engine
    from streamwarden.state import TransitionEvent

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.getppid()

    def watch_parent() -> None:  # the runner died (killed, crashed): stop with it
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()

    kwargs: dict[str, Any] = {}
    if args.serve:
        from streamwarden.config import RtspServerConfig

        kwargs["rtsp_server"] = RtspServerConfig(host="127.0.0.1", port=0, max_clients=10_000)
    engine = Engine(EngineConfig(), **kwargs)
    events_file = args.events_file.open("a", buffering=1) if args.events_file is not None else None
    if events_file is not None:

        def on_event(sid: str, event: TransitionEvent) -> None:
            events_file.write(json.dumps({"stream": sid, **event.as_dict()}) + "\n")

        engine.add_listener(on_event)

    api_port: int | None = None
    api_server: Any = None
    api_thread: threading.Thread | None = None
    engine.start()
    try:
        if not args.no_api:
            import uvicorn

            from streamwarden.api import create_app
            from streamwarden.config import ApiConfig

            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from benchlib import free_port

            api_port = free_port()
            config = ApiConfig(host="127.0.0.1", port=api_port)
            app = create_app(engine, config=config, state_store=None, environ={})
            api_server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=api_port, log_config=None, lifespan="off")
            )
            api_thread = threading.Thread(target=api_server.run, name="api", daemon=True)
            api_thread.start()

        recovery = json.loads(args.recovery) if args.recovery else None
        ids = [stream_id(i) for i in range(args.streams)]
        started = time.monotonic()
        for index, sid in enumerate(ids):
            spec: dict[str, Any] = {
                "id": sid,
                "source": {"type": "rtsp", "uri": f"{args.base_url}/cam{index}", "transport": "tcp"},
                "record": {"dir": str(args.record_dir), "format": "mkv", "segment_seconds": 10},
            }
            if args.serve:
                spec["serve"] = True
            if recovery is not None:
                spec["recovery"] = recovery
            engine.add_stream(parse_stream_spec(spec))

        deadline = started + args.ready_timeout
        playing = 0
        while time.monotonic() < deadline and not stop.is_set():
            playing = sum(1 for s in engine.list_streams() if s["state"] == "PLAYING")
            if playing == len(ids):
                break
            time.sleep(0.2)
        if api_server is not None:
            api_deadline = time.monotonic() + 10
            while not api_server.started and time.monotonic() < api_deadline:
                time.sleep(0.05)
        emit(
            "READY",
            {
                "playing": playing,
                "streams": len(ids),
                "seconds": round(time.monotonic() - started, 3),
                "api_port": api_port if api_server is not None and api_server.started else None,
                "rtsp_port": engine.rtsp_port if args.serve else None,
            },
        )
        stop.wait(args.max_seconds)

        health = {sid: engine.health(sid).as_dict() for sid in ids}
        states = {s["id"]: s["state"] for s in engine.list_streams()}
        serving = {}
        if args.serve:
            for sid in ids:
                info = engine.info(sid)
                serving[sid] = info.get("server")
    finally:
        stopped_at = time.monotonic()
        if api_server is not None:
            api_server.should_exit = True
        engine.stop(timeout=20.0)
        if api_thread is not None:
            api_thread.join(5.0)
        if events_file is not None:
            events_file.close()
    emit(
        "DONE",
        {
            "stop_seconds": round(time.monotonic() - stopped_at, 3),
            "states": states,
            "health": health,
            "server": serving,
            "disposal": {"disposed": engine.disposal.disposed, "abandoned": engine.disposal.abandoned},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
