"""The engine's RTSP server: every ``serve: true`` stream at ``rtsp://HOST:PORT/<stream-id>``.

One gst-rtsp-server per engine, its listening socket attached to the engine loop's private
MainContext. Each served stream has a mount whose factory builds, per media,
``appsrc ! h264parse|h265parse ! rtph264pay|rtph265pay`` (``pay0``), plus, when the source's
audio flows, ``appsrc ! aacparse ! rtpmp4gpay`` or ``appsrc ! rtppcmupay|rtppcmapay`` (``pay1``),
fed by the stream's ``ServeHub``
(see ``serve.py``): the camera is pulled once however many clients watch, nothing is
transcoded, and medias are shared by all clients of a mount.

Threads: gst-rtsp-server handles each client connection on a thread of its pool (up to
2 x max_clients of them, so a DESCRIBE that waits for a stream's first frame holds up nobody
else); the request signals below run there and only read or update counters under ``_lock``
and hand frames to the hub. Every action of ours that changes server or media state (mounting,
closing clients, releasing medias, session clean-up, slate encoding) runs on the engine loop
thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import gi

from streamwarden.config import OutageMode, RtspAuthMethod, RtspServerConfig, StreamSpec
from streamwarden.media.gst import GLib, Gst
from streamwarden.media.loop import LoopThread
from streamwarden.media.serve import (
    AUDIO_MAX_QUEUED,
    AUDIO_WAIT_SECONDS,
    GOP_MAX_FRAMES,
    OUTLET_MAX_QUEUED,
    ServeBranch,
    ServeHub,
)

gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstRtsp", "1.0")
from gi.repository import GstRtsp, GstRtspServer  # noqa: E402

log = logging.getLogger(__name__)

# Environment fallback for one user, so a password need not sit in the config file.
ENV_USER = "STREAMWARDEN_RTSP_USER"
ENV_PASSWORD = "STREAMWARDEN_RTSP_PASSWORD"

MAINTENANCE_SECONDS = 1.0  # session clean-up, client count, slate pacing (~1 fps)
# A media outlives its last client by this long. gst-rtsp-server would unprepare a shared
# media the moment its last client leaves, and a client arriving in that instant gets the dying
# media from the factory's cache and a 503 (seen with a client reconnecting at once). The engine
# holds each media itself and releases it when idle, after pointing the factory at a new one.
MEDIA_LINGER_SECONDS = 10.0
PENDING_SETUP_SECONDS = 5.0  # a SETUP admitted but never completed stops counting after this
BIND_RETRY_SECONDS = 5.0
_ROLE = "viewer"
_PARSERS = {"h264": ("h264parse", "rtph264pay"), "h265": ("h265parse", "rtph265pay")}
# Audio codec → what follows its appsrc (pay1). mpeg4-generic (RFC 3640) is what most cameras
# send for AAC; G.711 keeps its static payload types 0 and 8.
_AUDIO_PAYLOADERS = {
    "aac": "aacparse ! rtpmp4gpay name=pay1 pt=97",
    "pcmu": "rtppcmupay name=pay1",
    "pcma": "rtppcmapay name=pay1",
}
_STS_UNAVAILABLE = GstRtsp.RTSPStatusCode.SERVICE_UNAVAILABLE
_STS_OK = GstRtsp.RTSPStatusCode.OK
# A live media reports SUSPENDED once prerolled, even with suspend-mode none.
_PREPARED = (GstRtspServer.RTSPMediaStatus.PREPARED, GstRtspServer.RTSPMediaStatus.SUSPENDED)


def stream_id_of(path: str | None) -> str:
    """``/cam1`` or ``/cam1/stream=0`` → ``cam1``."""
    return (path or "").lstrip("/").split("/", 1)[0].split("?", 1)[0]


class _Mount:
    """A served stream: its hub, its factory and the medias built for it."""

    def __init__(self, stream_id: str, hub: ServeHub, factory: _ServeFactory) -> None:
        self.stream_id = stream_id
        self.hub = hub
        self.factory = factory
        self.medias: set[GstRtspServer.RTSPMedia] = set()
        self.held: dict[GstRtspServer.RTSPMedia, float | None] = {}  # held media -> idle since
        self.clients = 0
        self.pending: list[float] = []  # admitted SETUPs not yet seen as sessions
        self.rejected = 0
        self.shed_reason: str | None = None  # set: clients refused (resource pressure)


class _ServeMedia(GstRtspServer.RTSPMedia):
    """A shared media that attaches to its stream's hub when it is prepared (primed to preroll)."""

    serve_attach: Callable[[GstRtspServer.RTSPMedia], bool] | None = None  # set in media-configure

    def do_prepare(self, thread: GstRtspServer.RTSPThread | None = None) -> bool:
        attach = self.serve_attach
        if attach is None or not attach(self):
            return False
        return bool(GstRtspServer.RTSPMedia.do_prepare(self, thread))


class _ServeFactory(GstRtspServer.RTSPMediaFactory):
    """Builds the served media for one stream; the codec comes from the stream's first caps."""

    def __init__(self, hub: ServeHub, wait_seconds: float) -> None:
        super().__init__()
        self.hub = hub
        self.wait_seconds = wait_seconds
        # Part of the media cache key: bumped when a media is released or the codec changes, so
        # a new client never gets a media that is going away (or speaks the old codec).
        self.epoch = 0

    def do_gen_key(self, url: GstRtsp.RTSPUrl) -> str:
        return f"{url.abspath}#{self.epoch}"

    def do_create_element(self, url: GstRtsp.RTSPUrl) -> Gst.Element | None:
        # Client thread. A stream added before its first frame has no codec yet: wait (bounded).
        codec = self.hub.wait_for_codec(self.wait_seconds)
        if codec is None:
            log.warning("[%s] no video yet: cannot build the served media", self.hub.stream_id)
            return None
        parser, payloader = _PARSERS[codec]
        description = (
            "appsrc name=src is-live=true format=time do-timestamp=true block=false "
            f"max-bytes=0 max-buffers={GOP_MAX_FRAMES + OUTLET_MAX_QUEUED} leaky-type=upstream "
            # The parser puts the parameter sets in front of every keyframe, for joiners; the
            # payloader inserting them again made ffmpeg split each keyframe in two packets
            # with one DTS ("non monotonically increasing dts" once per GOP).
            f"! {parser} config-interval=-1 ! {payloader} name=pay0 pt=96 config-interval=0"
        )
        # Audio only when this attempt's audio flows: the media cannot preroll without a buffer
        # on every stream. A media built without it stays video-only for its life.
        audio = self.hub.wait_for_audio(min(self.wait_seconds, AUDIO_WAIT_SECONDS))
        if audio is not None:
            description += (
                " appsrc name=asrc is-live=true format=time do-timestamp=true block=false "
                f"max-bytes=0 max-buffers={AUDIO_MAX_QUEUED * 2} leaky-type=upstream "
                f"! {_AUDIO_PAYLOADERS[audio]}"
            )
        return Gst.parse_launch(f"( {description} )")


class RtspServer:
    """Owns the GstRtspServer of one engine: mounts, limits, auth, health and outage slate."""

    def __init__(
        self, config: RtspServerConfig, loop: LoopThread, *, environ: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self._loop = loop
        self._environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._mounts: dict[str, _Mount] = {}
        self._server: GstRtspServer.RTSPServer | None = None
        self._source: GLib.Source | None = None
        self._timer: GLib.Source | None = None
        self._permissions: GstRtspServer.RTSPPermissions | None = None
        self._slates = SlateMaker()
        self._bind_tried_at = 0.0
        self.port: int | None = None  # the bound port, None until listening
        self.error: str | None = None  # why it is not listening
        self.users: list[str] = []

    # -- life cycle (loop thread) ----------------------------------------------------------------
    def start(self) -> None:
        """Set the server up on the engine loop's context and listen.

        A port that cannot be bound (taken by another process) is logged and retried every
        BIND_RETRY_SECONDS; meanwhile the streams are still ingested and recorded, and
        ``status()`` says why nobody can connect. Serving is not worth stopping recording for.
        """
        server = GstRtspServer.RTSPServer()
        server.set_address(self.config.host)
        server.set_service(str(self.config.port))
        # A thread per client connection (the default is one for all of them): a client
        # waiting in DESCRIBE for a stream's first frame must not hold up the others.
        thread_pool = server.get_thread_pool()
        if thread_pool is not None:
            thread_pool.set_max_threads(min(1024, max(16, 2 * self.config.max_clients)))
        self._setup_auth(server)
        server.connect("client-connected", self._on_client_connected)
        self._server = server
        self._bind()
        self._timer = self._loop.timeout(MAINTENANCE_SECONDS, self._maintain)

    def _bind(self) -> bool:
        """Listen (loop thread); False, with ``error`` set, when the address cannot be bound."""
        assert self._server is not None
        self._bind_tried_at = time.monotonic()
        where = f"{self.config.host}:{self.config.port}"
        try:
            source = self._server.create_source(None)
        except GLib.Error as exc:
            source, reason = None, exc.message
        else:
            reason = "no listening source"
        if source is None:
            if self.error is None:
                log.error(
                    "[rtsp-server] cannot listen on %s: %s (retrying every %.0f s; streams are still "
                    "ingested and recorded)",
                    where,
                    reason,
                    BIND_RETRY_SECONDS,
                )
            self.error = f"cannot listen on {where}: {reason}"
            return False
        source.attach(self._loop.context)
        self._source = source
        self.error = None
        self.port = int(self._server.get_bound_port())
        log.info(
            "[rtsp-server] listening on %s:%d (%s)",
            self.config.host,
            self.port,
            f"{self.config.auth_method} auth, {len(self.users)} user(s)" if self.users else "no auth",
        )
        return True

    def stop(self) -> None:
        """Close every client and stop listening."""
        for stream_id in list(self._mounts):
            self.remove_stream(stream_id)
        if self._timer is not None:
            self._timer.destroy()
            self._timer = None
        if self._server is not None:
            self._server.client_filter(_close_client, None)
        if self._source is not None:
            self._source.destroy()
            self._source = None
        self._server = None
        log.info("[rtsp-server] stopped")

    def _setup_auth(self, server: GstRtspServer.RTSPServer) -> None:
        users = [(u.username, u.password.get_secret_value()) for u in self.config.users]
        env_user, env_password = self._environ.get(ENV_USER), self._environ.get(ENV_PASSWORD)
        if env_user and env_password:
            users.append((env_user, env_password))
        if not users:
            return
        auth = GstRtspServer.RTSPAuth()
        digest = self.config.auth_method == RtspAuthMethod.DIGEST
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST if digest else GstRtsp.RTSPAuthMethod.BASIC)
        auth.set_realm("streamwarden")
        for username, password in users:
            token = GstRtspServer.RTSPToken()
            token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, _ROLE)
            if digest:
                auth.add_digest(username, password, token)
            else:
                auth.add_basic(GstRtspServer.RTSPAuth.make_basic(username, password), token)
        # No default token: a request without valid credentials gets 401 before any media exists.
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(_ROLE, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
        permissions.add_permission_for_role(_ROLE, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
        self._permissions = permissions
        self.users = [u for u, _ in users]

    # -- streams (loop thread) -------------------------------------------------------------------
    def add_stream(self, stream_id: str) -> None:
        """Mount ``/<stream_id>``; its hub lives until the stream is removed."""
        if stream_id in self._mounts or self._server is None:
            return
        hub = ServeHub(stream_id, on_codec_change=self._on_codec_change)
        factory = _ServeFactory(hub, self.config.describe_timeout_seconds)
        factory.set_shared(True)
        factory.set_media_gtype(_ServeMedia.__gtype__)  # type: ignore[attr-defined]
        factory.set_stop_on_disconnect(True)
        factory.set_eos_shutdown(False)
        factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP)
        if self._permissions is not None:
            factory.set_permissions(self._permissions)
        factory.connect("media-configure", self._on_media_configure, stream_id)
        mount = _Mount(stream_id, hub, factory)
        with self._lock:
            self._mounts[stream_id] = mount
        mount_points = self._server.get_mount_points()
        if mount_points is not None:
            mount_points.add_factory(f"/{stream_id}", factory)
        log.info("[%s] served at rtsp://%s:%s/%s", stream_id, self.config.host, self.port, stream_id)

    def remove_stream(self, stream_id: str) -> None:
        """Unmount; every client of the stream is disconnected."""
        with self._lock:
            mount = self._mounts.pop(stream_id, None)
        if mount is None:
            return
        if self._server is not None:
            mount_points = self._server.get_mount_points()
            if mount_points is not None:
                mount_points.remove_factory(f"/{stream_id}")
        closed = self._close_clients_of(mount)
        for media in list(mount.held):
            self._release_media(mount, media)
        mount.hub.close()
        log.info("[%s] no longer served (%d client(s) disconnected)", stream_id, closed)

    def has_stream(self, stream_id: str) -> bool:
        with self._lock:
            return stream_id in self._mounts

    def branch_for(self, spec: StreamSpec) -> ServeBranch | None:
        """Branch factory for the engine: one hand-off per attempt of a served stream."""
        with self._lock:
            mount = self._mounts.get(spec.id) if spec.serve else None
        return ServeBranch(mount.hub) if mount is not None else None

    def status(self, stream_id: str) -> dict[str, Any] | None:
        """Health of one served stream (any thread)."""
        with self._lock:
            mount = self._mounts.get(stream_id)
            rejected = mount.rejected if mount is not None else 0
            shed_reason = mount.shed_reason if mount is not None else None
        if mount is None:
            return None
        snapshot = mount.hub.snapshot()
        age = snapshot["last_frame_age_seconds"]
        return {
            "active": self._source is not None,
            "reason": self.error,
            "path": f"/{stream_id}",
            "port": self.port,
            "outage": age is None or age >= self.config.outage_after_seconds,
            "outage_mode": str(self.config.outage),
            "rejected_over_limit": rejected,
            "shed_reason": shed_reason,
            **snapshot,
        }

    # -- client requests (gst-rtsp-server client threads) ----------------------------------------
    def _on_client_connected(
        self, _server: GstRtspServer.RTSPServer, client: GstRtspServer.RTSPClient
    ) -> None:
        client.connect("new-session", self._on_new_session)
        client.connect("pre-describe-request", self._on_pre_describe)
        client.connect("pre-setup-request", self._on_pre_setup)
        client.connect("setup-request", self._on_setup)
        client.connect("play-request", self._on_play)
        client.connect("teardown-request", self._on_gone)
        client.connect("closed", self._on_closed)

    def _on_new_session(self, _client: GstRtspServer.RTSPClient, session: GstRtspServer.RTSPSession) -> None:
        # A client that sends nothing (no RTCP, no keep-alive) is dropped after this.
        session.set_timeout(self.config.session_timeout_seconds)

    def _on_pre_describe(
        self, _client: GstRtspServer.RTSPClient, ctx: GstRtspServer.RTSPContext
    ) -> GstRtsp.RTSPStatusCode:
        stream_id = stream_id_of(ctx.uri.abspath if ctx.uri is not None else None)
        with self._lock:
            mount = self._mounts.get(stream_id)
            if mount is None:
                return _STS_OK  # gst-rtsp-server answers 404
            if self._over_limit(mount):
                return _STS_UNAVAILABLE
        if mount.hub.wait_for_codec(self.config.describe_timeout_seconds) is None:
            log.warning("[%s] DESCRIBE refused: no video from the source yet", stream_id)
            return _STS_UNAVAILABLE
        return _STS_OK

    def _on_pre_setup(
        self, _client: GstRtspServer.RTSPClient, ctx: GstRtspServer.RTSPContext
    ) -> GstRtsp.RTSPStatusCode:
        stream_id = stream_id_of(ctx.uri.abspath if ctx.uri is not None else None)
        with self._lock:
            mount = self._mounts.get(stream_id)
            if mount is None:
                return _STS_OK
            if ctx.session is not None:
                sessmedia, _matched = ctx.session.get_media(f"/{stream_id}")
                if sessmedia is not None:
                    return _STS_OK  # another track of a session already counted
            if self._over_limit(mount):
                return _STS_UNAVAILABLE
            mount.pending.append(time.monotonic())
        return _STS_OK

    def _over_limit(self, mount: _Mount) -> bool:
        """Locked. True (and counted, logged) when one more client would exceed a limit."""
        now = time.monotonic()
        total = 0
        for each in self._mounts.values():
            each.pending = [t for t in each.pending if now - t < PENDING_SETUP_SECONDS]
            total += each.clients + len(each.pending)
        mine = mount.clients + len(mount.pending)
        if mount.shed_reason is not None:
            reason = f"clients shed under resource pressure ({mount.shed_reason})"
        elif mine >= self.config.max_clients_per_stream:
            reason = f"max_clients_per_stream {self.config.max_clients_per_stream}"
        elif total >= self.config.max_clients:
            reason = f"max_clients {self.config.max_clients}"
        else:
            return False
        mount.rejected += 1
        log.warning("[%s] client refused with 503: %s reached", mount.stream_id, reason)
        return True

    def _on_setup(self, _client: GstRtspServer.RTSPClient, ctx: GstRtspServer.RTSPContext) -> None:
        stream_id = stream_id_of(ctx.uri.abspath if ctx.uri is not None else None)
        with self._lock:
            mount = self._mounts.get(stream_id)
            if mount is not None and mount.pending:
                mount.pending.pop(0)
                mount.clients += 1  # counted at once; the next recount confirms it
        self._loop.schedule(self._recount)

    def _on_play(self, _client: GstRtspServer.RTSPClient, ctx: GstRtspServer.RTSPContext) -> None:
        """The client's transport is active now: give it the last GOP when nobody else minds.

        Only the keyframe a media prerolled on waits for its first PLAY; anything else sent
        before reaches nobody, and a shared media cannot be primed for one client. So the cached
        GOP goes in when this client is the media's only one (a picture at once instead of after
        up to a GOP), or during an outage in ``hold`` mode (the last picture instead of nothing;
        nothing else is being sent to the others). See ``ServeHub.on_play``.
        """
        if ctx.sessmedia is None:
            return
        stream_id = stream_id_of(ctx.uri.abspath if ctx.uri is not None else None)
        with self._lock:
            mount = self._mounts.get(stream_id)
        if mount is None:
            return
        media = ctx.sessmedia.get_media()
        outage = mount.hub.outage_seconds() >= self.config.outage_after_seconds
        replayed = mount.hub.on_play(
            media,
            alone=self._sessions_on(media) <= 1,
            outage_hold=outage and self.config.outage == OutageMode.HOLD,
        )
        log.debug("[%s] PLAY: %d cached frames sent", stream_id, replayed)

    def _sessions_on(self, media: object) -> int:
        pool = self._server.get_session_pool() if self._server is not None else None
        if pool is None:
            return 0
        return sum(
            1
            for session in pool.filter(None, None)
            for sessmedia in session.filter(None, None)
            if sessmedia.get_media() is media
        )

    def _on_gone(self, _client: GstRtspServer.RTSPClient, _ctx: GstRtspServer.RTSPContext) -> None:
        # The session media is released right after this signal: count a moment later.
        self._recount_soon()

    def _on_closed(self, _client: GstRtspServer.RTSPClient) -> None:
        self._recount_soon()

    def _recount_soon(self) -> None:
        def _once() -> bool:
            self._recount()
            return False

        self._loop.timeout(0.05, _once)

    # -- medias (client and media threads) -------------------------------------------------------
    def _on_media_configure(
        self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia, stream_id: str
    ) -> None:
        # Client thread, before the media is prepared: attaching happens in its prepare.
        if isinstance(media, _ServeMedia):
            media.serve_attach = lambda m: self._attach_media(m, stream_id)
        media.connect("prepared", lambda m: self._loop.schedule(lambda: self._hold_media(m, stream_id)))
        media.connect("unprepared", self._on_media_unprepared, stream_id)

    def _attach_media(self, media: GstRtspServer.RTSPMedia, stream_id: str) -> bool:
        """The media is being prepared: feed it (one cached keyframe to preroll on)."""
        with self._lock:
            mount = self._mounts.get(stream_id)
        element = media.get_element()
        appsrc = element.get_by_name("src") if isinstance(element, Gst.Bin) else None
        audio = element.get_by_name("asrc") if isinstance(element, Gst.Bin) else None
        if mount is None or appsrc is None or not mount.hub.add_outlet(media, appsrc, audio):
            return False
        with self._lock:
            mount.medias.add(media)
        log.info("[%s] served media prepared", stream_id)
        return True

    def _hold_media(self, media: GstRtspServer.RTSPMedia, stream_id: str) -> None:
        """Loop thread: take a prepare reference of our own (see MEDIA_LINGER_SECONDS)."""
        with self._lock:
            mount = self._mounts.get(stream_id)
        status = media.get_status()
        if mount is None or media in mount.held or status not in _PREPARED:
            return
        if media.prepare(None):  # already prepared: only counts one more user
            with self._lock:
                mount.held[media] = None

    def _release_media(self, mount: _Mount, media: GstRtspServer.RTSPMedia) -> None:
        """Loop thread: new clients get a new media; this one goes once its clients are gone."""
        with self._lock:
            if media not in mount.held:
                return
            del mount.held[media]
        mount.factory.epoch += 1
        media.unprepare()

    def _on_media_unprepared(self, media: GstRtspServer.RTSPMedia, stream_id: str) -> None:
        with self._lock:
            mount = self._mounts.get(stream_id)
            if mount is not None:
                mount.medias.discard(media)
                mount.held.pop(media, None)
        if mount is not None:
            mount.hub.remove_outlet(media)
        log.info("[%s] served media released", stream_id)

    # -- codec change (streaming thread → loop) --------------------------------------------------
    def _on_codec_change(self, hub: ServeHub, old: str, new: str) -> None:
        log.warning(
            "[%s] source codec changed %s -> %s: disconnecting its clients (they can reconnect)",
            hub.stream_id,
            old,
            new,
        )
        self._loop.schedule(lambda: self._codec_changed(hub.stream_id, hub))

    def _codec_changed(self, stream_id: str, hub: ServeHub) -> None:
        with self._lock:
            mount = self._mounts.get(stream_id)
        if mount is None or mount.hub is not hub:
            return
        mount.factory.epoch += 1
        self._close_clients_of(mount)
        for media in list(mount.held):
            self._release_media(mount, media)

    def shed_clients(self, stream_id: str, reason: str | None) -> int:
        """Stop serving a stream's clients (``reason``) or serve them again (None); loop thread.

        The first thing shed under resource pressure: the ingest and the recording go on.
        Returns how many clients were disconnected.
        """
        with self._lock:
            mount = self._mounts.get(stream_id)
            if mount is None:
                return 0
            mount.shed_reason = reason
        if reason is None:
            log.info("[%s] serving RTSP clients again", stream_id)
            return 0
        closed = self._close_clients_of(mount)
        log.warning("[%s] RTSP clients shed (%d closed): %s", stream_id, closed, reason)
        return closed

    # -- maintenance (loop thread) ---------------------------------------------------------------
    def _close_clients_of(self, mount: _Mount) -> int:
        """Disconnect every client holding a session on one of ``mount``'s medias."""
        if self._server is None:
            return 0
        with self._lock:
            medias = set(mount.medias)
        if not medias:
            return 0
        closed = 0

        def _session_uses(_client: Any, session: GstRtspServer.RTSPSession, _data: Any) -> Any:
            for sessmedia in session.filter(None, None):
                if sessmedia.get_media() in medias:
                    return GstRtspServer.RTSPFilterResult.REF
            return GstRtspServer.RTSPFilterResult.KEEP

        def _filter(_server: Any, client: GstRtspServer.RTSPClient, _data: Any) -> Any:
            nonlocal closed
            if client.session_filter(_session_uses, None):
                closed += 1
                client.close()
            return GstRtspServer.RTSPFilterResult.KEEP

        self._server.client_filter(_filter, None)
        self._recount_soon()
        return closed

    def _maintain(self) -> bool:
        if self._server is None:
            return False
        if self._source is None:
            if time.monotonic() - self._bind_tried_at >= BIND_RETRY_SECONDS:
                self._bind()
            return True
        pool = self._server.get_session_pool()
        if pool is not None:
            expired = pool.cleanup()
            if expired:
                log.info("[rtsp-server] %d session(s) timed out (no keep-alive)", expired)
        self._recount()
        if self.config.outage == OutageMode.SLATE:
            self._push_slates()
        return True

    def _recount(self) -> None:
        """Clients per media and per stream, from the sessions gst-rtsp-server holds now."""
        if self._server is None:
            return
        pool = self._server.get_session_pool()
        per_media: Counter[object] = Counter()
        if pool is not None:
            for session in pool.filter(None, None):
                for sessmedia in session.filter(None, None):
                    per_media[sessmedia.get_media()] += 1
        now = time.monotonic()
        idle: list[tuple[_Mount, GstRtspServer.RTSPMedia]] = []
        with self._lock:
            mounts = list(self._mounts.values())
            for mount in mounts:
                mount.clients = sum(per_media.get(m, 0) for m in mount.medias)
                for media, idle_since in mount.held.items():
                    if per_media.get(media, 0):
                        mount.held[media] = None
                    elif idle_since is None:
                        mount.held[media] = now
                    elif now - idle_since >= MEDIA_LINGER_SECONDS:
                        idle.append((mount, media))
        for mount in mounts:
            mount.hub.set_clients(dict(per_media))
        for mount, media in idle:
            self._release_media(mount, media)

    def _push_slates(self) -> None:
        with self._lock:
            mounts = list(self._mounts.values())
        for mount in mounts:
            hub = mount.hub
            if not hub.has_outlets() or hub.outage_seconds() < self.config.outage_after_seconds:
                continue
            slate = self._slates.get(hub.codec or "h264", hub.width or 640, hub.height or 360)
            if slate is not None:
                hub.push_slate(*slate)


def _close_client(_server: Any, client: GstRtspServer.RTSPClient, _data: Any) -> Any:
    client.close()
    return GstRtspServer.RTSPFilterResult.KEEP


class SlateMaker:
    """Encodes a "signal lost" still once per (codec, width, height), on the engine loop.

    The encode runs asynchronously (bus watch on the loop's context); until it is ready, and
    forever if the encoder is missing (x264enc/x265enc are test-media plug-ins here), the
    outage behaves like ``hold``.
    """

    _ENCODERS = {
        "h264": (
            "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=1 pass=quant quantizer=26",
            "h264parse",
        ),
        "h265": (
            "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=1 qp=28 "
            "option-string=repeat-headers=1",
            "h265parse",
        ),
    }

    def __init__(self) -> None:
        self._ready: dict[tuple[str, int, int], tuple[Gst.Buffer, Gst.Caps]] = {}
        self._pending: dict[tuple[str, int, int], Gst.Pipeline] = {}
        self._failed: set[tuple[str, int, int]] = set()

    def get(self, codec: str, width: int, height: int) -> tuple[Gst.Buffer, Gst.Caps] | None:
        key = (codec, width, height)
        if key in self._ready:
            return self._ready[key]
        if key not in self._pending and key not in self._failed:
            try:
                self._start(key)
            except Exception as exc:
                self._failed.add(key)
                log.warning(
                    "[rtsp-server] cannot encode the %s %dx%d slate (outage falls back to hold): %s",
                    *key,
                    exc,
                )
        return None

    def _start(self, key: tuple[str, int, int]) -> None:
        codec, width, height = key
        encoder, parser = self._ENCODERS[codec]
        overlay = ""
        if Gst.ElementFactory.find("textoverlay") is not None:
            size = max(8, height // 14)
            overlay = (
                f'textoverlay text="SIGNAL LOST" font-desc="Sans Bold {size}" '
                "valignment=center halignment=center ! "
            )
        description = (
            "videotestsrc num-buffers=1 pattern=black "
            f"! video/x-raw,format=I420,width={width},height={height},framerate=1/1,pixel-aspect-ratio=1/1 "
            f"! {overlay}{encoder} ! {parser} config-interval=-1 "
            f"! video/x-{codec},stream-format=byte-stream,alignment=au "
            "! appsink name=sink sync=false max-buffers=4 wait-on-eos=false"
        )
        pipeline = Gst.parse_launch(description)
        assert isinstance(pipeline, Gst.Pipeline)
        bus = pipeline.get_bus()
        bus.add_signal_watch()  # the loop thread's context
        bus.connect("message", self._on_message, key)
        self._pending[key] = pipeline
        if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise RuntimeError("slate encoder refused to start")

    def _on_message(self, bus: Gst.Bus, message: Gst.Message, key: tuple[str, int, int]) -> None:
        if message.type not in (Gst.MessageType.EOS, Gst.MessageType.ERROR):
            return
        pipeline = self._pending.pop(key, None)
        if pipeline is None:
            return
        if message.type == Gst.MessageType.EOS:
            sink = pipeline.get_by_name("sink")
            sample = sink.emit("try-pull-sample", 0) if sink is not None else None
            buffer = sample.get_buffer() if sample is not None else None
            caps = sample.get_caps() if sample is not None else None
            if buffer is not None and caps is not None:
                self._ready[key] = (buffer, caps)
                log.info(
                    "[rtsp-server] encoded the %s %dx%d outage slate (%d bytes)", *key, buffer.get_size()
                )
            else:
                self._failed.add(key)
        else:
            error, _debug = message.parse_error()
            self._failed.add(key)
            log.warning("[rtsp-server] cannot encode the %s %dx%d outage slate: %s", *key, error.message)
        bus.remove_signal_watch()
        pipeline.set_state(Gst.State.NULL)
