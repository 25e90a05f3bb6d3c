"""Cross-stream failure correlation: many streams failing together are one incident, not N.

When an NVR reboots or a switch port dies, every camera behind it fails within seconds. Handled
stream by stream, that floods the logs with N identical errors and makes N streams hammer a host
that is down. Grouping the failures by what the streams share (host, network, credentials) turns
them into one incident an operator can read, and lets a single "probe" stream retry for the group
while the others wait, then come back staggered instead of all at once.

Pure Python, driven by an injectable clock; the supervisor feeds it events and calls
``analyze()`` every tick.
"""

from __future__ import annotations

import hashlib
import ipaddress
import sys
import time
from array import array
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

__all__ = [
    "ChangeKind",
    "Correlator",
    "Incident",
    "IncidentChange",
    "IncidentKind",
    "StreamKeys",
    "keys_for_url",
]

IncidentKind = Literal["host", "network", "credential"]
ChangeKind = Literal["opened", "updated", "released", "closed"]

# Most specific first: a stream joins the first level whose group qualifies.
_LEVELS: tuple[IncidentKind, ...] = ("host", "network", "credential")
_MAX_CATEGORIES = 64  # categories are caller strings; beyond this many they are counted as "other"
_OTHER = "other"
_IPV4_PREFIX = 24
_IPV6_PREFIX = 64
_SERIAL_MASK = 0xFFFFFFFF  # serials are stored as uint32 in the ring


@dataclass(frozen=True, slots=True)
class StreamKeys:
    """What a stream shares with others; None where it does not apply (e.g. files have no host).

    ``credential`` is an opaque short hash computed by the caller, never the secret itself, so
    incidents and logs can show it.
    """

    host: str | None = None
    network: str | None = None  # "10.0.0.0/24" (IPv4) or "2001:db8::/64" (IPv6)
    credential: str | None = None

    def for_kind(self, kind: IncidentKind) -> str | None:
        """The key used to group at level ``kind``."""
        if kind == "host":
            return self.host
        if kind == "network":
            return self.network
        return self.credential


def keys_for_url(url: str | None) -> StreamKeys:
    """Derive grouping keys from a stream URL (rtsp://, http://, ...); empty keys for files or junk.

    The host is lowercased and the port ignored (an NVR serves many cameras on several ports),
    except on loopback, where each port is a separate local peer (relay, proxy, test server).
    The network is the /24 (IPv4) or /64 (IPv6) around an IP-literal host; hostnames get none,
    because resolving them here would block. The credential key is the first 12 hex digits of
    sha256("user:password@host"), so equal logins on one host group without exposing the secret.
    """
    if not url:
        return StreamKeys()
    try:
        parts = urlsplit(url.strip())
        hostname = parts.hostname
        username, password = parts.username, parts.password
    except ValueError:  # e.g. an unbalanced "[" in an IPv6 literal
        return StreamKeys()
    if not hostname or parts.scheme.lower() == "file":
        return StreamKeys()
    host = unquote(hostname).lower()
    network: str | None = None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass  # a DNS name
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        host = str(ip)  # canonical form, so "2001:DB8:0::1" and "2001:db8::1" are one host
        if isinstance(ip, ipaddress.IPv4Address):
            network = ipaddress.IPv4Network((int(ip), _IPV4_PREFIX), strict=False).with_prefixlen
        else:
            network = ipaddress.IPv6Network((int(ip), _IPV6_PREFIX), strict=False).with_prefixlen
        if ip.is_loopback:
            # On loopback each port is a different peer process (a local relay, proxy or test
            # server), not one device: the port is part of the host and there is no network.
            network = None
            if parts.port is not None:
                host = f"{host}:{parts.port}"
    credential: str | None = None
    if username or password:
        secret = f"{unquote(username or '')}:{unquote(password or '')}@{host}"
        credential = sys.intern(hashlib.sha256(secret.encode()).hexdigest()[:12])
    # Interned: a thousand cameras behind one NVR share one copy of each key string.
    return StreamKeys(
        host=sys.intern(host),
        network=sys.intern(network) if network is not None else None,
        credential=credential,
    )


@dataclass(frozen=True)
class Incident:
    """An immutable snapshot of one incident, for logs, events and the API."""

    id: int
    kind: IncidentKind
    key: str
    stream_ids: tuple[str, ...]  # every registered stream that joined it, sorted
    failing_ids: tuple[str, ...]  # those still failing, sorted
    probe: str | None  # the stream allowed to retry at its own pace
    opened_at: float
    closed_at: float | None
    categories: Counter[str]  # failure events of its streams, by category
    summary: str  # e.g. "host 10.0.0.5 unreachable: 12 streams"

    @property
    def name(self) -> str:
        """Short label for logs: "inc-7"."""
        return f"inc-{self.id}"


@dataclass(frozen=True)
class IncidentChange:
    """What ``analyze()`` noticed since the previous call.

    ``released`` means the probe recovered: the waiting streams should ask ``pace()`` again, which
    now returns their staggered release slot instead of the long wait.
    """

    kind: ChangeKind
    incident: Incident


def _summary(kind: IncidentKind, key: str, categories: Counter[str], streams: int) -> str:
    dominant = min(categories.items(), key=lambda item: (-item[1], item[0]))[0] if categories else ""
    verb = {"network": "unreachable", "auth": "rejecting credentials"}.get(dominant, "failing")
    return f"{kind} {key} {verb}: {streams} stream{'s' if streams != 1 else ''}"


class _Stream:
    __slots__ = (
        "failing",
        "failing_since",
        "id",
        "incident",
        "keys",
        "last_failure",
        "next_attempt",
        "release_at",
        "serial",
    )

    def __init__(self, stream_id: str, serial: int, keys: StreamKeys) -> None:
        self.id = stream_id
        self.serial = serial  # never reused, so stale ring records of a removed stream match nothing
        self.keys = keys
        self.failing = False
        self.failing_since = 0.0
        self.last_failure = 0.0
        self.next_attempt: float | None = None  # when the probe's next attempt starts, from pace()
        self.release_at: float | None = None  # slot handed out when the probe recovered
        self.incident: _Incident | None = None


class _Incident:
    # Members are a sorted tuple, not a set: half the memory, and pacing needs the order anyway.
    __slots__ = (
        "categories",
        "dirty",
        "failing",
        "id",
        "key",
        "kind",
        "members",
        "opened_at",
        "probe",
        "quiet_since",
        "release_pending",
    )

    def __init__(self, incident_id: int, kind: IncidentKind, key: str, now: float) -> None:
        self.id = incident_id
        self.kind: IncidentKind = kind
        self.key = key
        self.members: tuple[str, ...] = ()  # sorted ids
        self.failing = 0  # members failing now
        self.opened_at = now
        self.quiet_since: float | None = None  # when the last failing member recovered
        self.categories: Counter[str] = Counter()
        self.probe: str | None = None
        self.dirty = False  # membership changed since the last analyze()
        self.release_pending = False

    def snapshot(self, streams: dict[str, _Stream], closed_at: float | None = None) -> Incident:
        ids = self.members
        return Incident(
            id=self.id,
            kind=self.kind,
            key=self.key,
            stream_ids=ids,
            failing_ids=tuple(m for m in ids if (s := streams.get(m)) is not None and s.failing),
            probe=self.probe,
            opened_at=self.opened_at,
            closed_at=closed_at,
            categories=Counter(self.categories),
            summary=_summary(self.kind, self.key, self.categories, len(ids)),
        )


class Correlator:
    """Groups concurrent failures of streams that share a host, network or credential.

    Rules, checked by ``analyze()``:

    - A stream is *failing* from ``record_failure()`` until ``record_recovery()``. It is a
      candidate when it is failing, its latest failure lies inside ``window_seconds``, and it is
      not in an open incident yet.
    - Level by level (host, then network, then credential) a candidate joins the open incident
      with its key at that level; otherwise candidates sharing a key form a new incident when
      there are at least ``min_streams`` of them. A stream is in at most one incident, the first
      level that qualifies, and stays there until the incident closes.
    - An incident closes once none of its streams has been failing for ``close_hold_seconds``
      (immediately when all of them were unregistered), so a flapping group does not open and
      close every tick.

    Memory is bounded: failures go to a fixed ring of ``max_records`` entries held in flat
    arrays (13 bytes each), the closed-incident history keeps ``history`` snapshots, and the
    rest is per registered stream. Not thread-safe: it belongs to the engine's supervisor thread.
    """

    def __init__(
        self,
        window_seconds: float = 30.0,
        min_streams: int = 3,
        max_records: int = 20_000,
        *,
        release_spread_seconds: float = 0.2,
        close_hold_seconds: float = 5.0,
        probe_result_seconds: float = 10.0,
        history: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0: {window_seconds}")
        if min_streams < 2:
            raise ValueError(f"min_streams must be >= 2 (one stream is not a correlation): {min_streams}")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1: {max_records}")
        for name, value in (
            ("release_spread_seconds", release_spread_seconds),
            ("close_hold_seconds", close_hold_seconds),
            ("probe_result_seconds", probe_result_seconds),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0: {value}")
        if history < 0:
            raise ValueError(f"history must be >= 0: {history}")
        self.window_seconds = window_seconds
        self.min_streams = min_streams
        self.max_records = max_records
        self.release_spread_seconds = release_spread_seconds
        self.close_hold_seconds = close_hold_seconds
        self.probe_result_seconds = probe_result_seconds
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._unassigned: dict[str, _Stream] = {}  # failing streams in no incident
        self._open: dict[int, _Incident] = {}
        self._by_key: dict[tuple[IncidentKind, str], _Incident] = {}
        self._closed: deque[Incident] = deque(maxlen=history)
        self._next_serial = 1  # wraps at 2**32; a stale record matching a new stream only skews a count
        self._next_incident = 1
        # The failure ring: time, stream serial, category index; parallel flat arrays.
        self._ring_time = array("d")
        self._ring_serial = array("I")
        self._ring_category = array("B")
        self._ring_pos = 0
        self._category_index: dict[str, int] = {}
        self._category_names: list[str] = []

    # -- events -----------------------------------------------------------------------------------
    def register(self, stream_id: str, keys: StreamKeys) -> None:
        """Start tracking a stream; registering an id again replaces it (state starts fresh)."""
        if stream_id in self._streams:
            self.unregister(stream_id)
        self._streams[stream_id] = _Stream(stream_id, self._next_serial, keys)
        self._next_serial = (self._next_serial + 1) & _SERIAL_MASK

    def unregister(self, stream_id: str) -> None:
        """Forget a stream (removed or disabled); it leaves its incident. Unknown ids are ignored."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._unassigned.pop(stream_id, None)
        inc = stream.incident
        if inc is None:
            return
        inc.members = tuple(m for m in inc.members if m != stream_id)
        if stream.failing:
            inc.failing -= 1
        inc.dirty = True
        if not inc.failing and inc.quiet_since is None:
            inc.quiet_since = self._clock()
        if inc.probe == stream_id:
            inc.probe = self._choose_probe(inc)

    def record_failure(self, stream_id: str, category: str) -> None:
        """Note one failed attempt or one drop; ``category`` is e.g. a ``Category`` value.

        Failures of unregistered streams (late events after a removal) are ignored.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        now = self._clock()
        name, index = self._category(str(category))
        self._append_record(now, stream.serial, index)
        was_failing = stream.failing
        if not was_failing:
            stream.failing = True
            stream.failing_since = now
        stream.last_failure = now
        stream.next_attempt = None  # the attempt the probe was waiting for has its result
        stream.release_at = None  # a released stream that fails again is on its own backoff
        inc = stream.incident
        if inc is None:
            self._unassigned[stream_id] = stream
            return
        inc.categories[name] += 1
        if not was_failing:
            inc.failing += 1
        inc.quiet_since = None

    def record_recovery(self, stream_id: str) -> None:
        """The stream plays again. When it is its incident's probe, the others are released."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.failing:
            return
        now = self._clock()
        stream.failing = False
        stream.next_attempt = None
        stream.release_at = None
        self._unassigned.pop(stream_id, None)
        inc = stream.incident
        if inc is None:
            return
        inc.failing -= 1
        if not inc.failing:
            inc.quiet_since = now
        if inc.probe == stream_id and inc.failing:
            spread = self.release_spread_seconds
            waiting = (s for m in inc.members if (s := self._streams.get(m)) is not None and s.failing)
            for rank, other in enumerate(waiting, start=1):
                other.release_at = now + rank * spread
            inc.release_pending = True

    # -- the tick ---------------------------------------------------------------------------------
    def analyze(self) -> list[IncidentChange]:
        """Close quiet incidents, grow open ones, open new ones; return what changed, in that order.

        Cost: O(open incidents + failing streams not in an incident), plus one pass over the
        ring's records inside the window on ticks where streams join incidents.
        """
        now = self._clock()
        changes: list[IncidentChange] = []
        for inc in list(self._open.values()):
            quiet = inc.quiet_since is not None and now - inc.quiet_since >= self.close_hold_seconds
            if not inc.members or (not inc.failing and quiet):
                changes.append(IncidentChange("closed", self._close(inc, now)))
        opened = self._assign(now)
        changes.extend(IncidentChange("opened", inc.snapshot(self._streams)) for inc in opened)
        for inc in self._open.values():
            if inc.dirty:
                inc.dirty = False
                changes.append(IncidentChange("updated", inc.snapshot(self._streams)))
            if inc.release_pending:
                inc.release_pending = False
                if inc.failing:  # someone is still waiting for the release
                    changes.append(IncidentChange("released", inc.snapshot(self._streams)))
        return changes

    def _assign(self, now: float) -> list[_Incident]:
        horizon = now - self.window_seconds
        candidates = [s for s in self._unassigned.values() if s.last_failure >= horizon]
        joined: dict[int, _Stream] = {}  # by serial, for the category count
        grown: dict[int, tuple[_Incident, list[str]]] = {}  # incident id -> (incident, new member ids)
        opened: list[_Incident] = []
        for level in _LEVELS:
            if not candidates:
                break
            groups: dict[str, list[_Stream]] = {}
            rest: list[_Stream] = []
            for stream in candidates:
                key = stream.keys.for_kind(level)
                if key is None:
                    rest.append(stream)
                    continue
                existing = self._by_key.get((level, key))
                if existing is not None:
                    self._join(existing, stream, joined, grown)
                    existing.dirty = True
                else:
                    groups.setdefault(key, []).append(stream)
            for key in sorted(groups):
                members = groups[key]
                if len(members) < self.min_streams:
                    rest.extend(members)
                    continue
                inc = _Incident(self._next_incident, level, key, now)
                self._next_incident += 1
                self._open[inc.id] = inc
                self._by_key[(level, key)] = inc
                for stream in members:
                    self._join(inc, stream, joined, grown)
                opened.append(inc)
            candidates = rest
        for inc, new_ids in grown.values():
            inc.members = tuple(sorted((*inc.members, *new_ids)))
        for inc in opened:
            inc.probe = self._choose_probe(inc)
            inc.dirty = False
        if joined:
            self._count_recent(joined, horizon)
            if not self._unassigned:
                self._unassigned = {}  # a dict never shrinks; drop the one that held a whole outage
        return opened

    def _join(
        self,
        inc: _Incident,
        stream: _Stream,
        joined: dict[int, _Stream],
        grown: dict[int, tuple[_Incident, list[str]]],
    ) -> None:
        stream.incident = inc
        del self._unassigned[stream.id]
        grown.setdefault(inc.id, (inc, []))[1].append(stream.id)
        inc.failing += 1
        inc.quiet_since = None
        joined[stream.serial] = stream

    def _count_recent(self, joined: dict[int, _Stream], horizon: float) -> None:
        # Newest first, stopping at the window: the categories a joining stream brings along.
        times, serials, cats = self._ring_time, self._ring_serial, self._ring_category
        size = len(times)
        for back in range(1, size + 1):
            i = (self._ring_pos - back) % size
            t = times[i]
            if t < horizon:
                break
            stream = joined.get(serials[i])
            if stream is not None and stream.incident is not None and t >= stream.failing_since:
                stream.incident.categories[self._category_names[cats[i]]] += 1

    def _close(self, inc: _Incident, now: float) -> Incident:
        snapshot = inc.snapshot(self._streams, closed_at=now)
        del self._open[inc.id]
        del self._by_key[(inc.kind, inc.key)]
        for stream_id in inc.members:
            stream = self._streams.get(stream_id)
            if stream is not None:
                stream.incident = None
                stream.release_at = None
        self._closed.append(snapshot)
        return snapshot

    def _choose_probe(self, inc: _Incident) -> str | None:
        # Deterministic: the first failing member by id, else the first member.
        for member in inc.members:
            stream = self._streams.get(member)
            if stream is not None and stream.failing:
                return member
        return inc.members[0] if inc.members else None

    # -- pacing -----------------------------------------------------------------------------------
    def pace(self, stream_id: str, due_delay: float) -> float:
        """Turn a stream's backoff delay into the delay it should really wait, given its incident.

        Call it when scheduling a retry, with the delay the stream's own backoff chose; call it
        again for the waiting streams after a ``released`` change. Exactly:

        - Not in an open incident (or not failing): ``due_delay`` unchanged.
        - The incident's probe (first failing member by id; re-chosen when it is unregistered):
          ``due_delay`` unchanged, and its next attempt is remembered as now + ``due_delay``.
        - Another member, after the probe recovered and before it failed again itself: its release
          slot, ``max(0, slot - now)``, where the failing members (sorted by id) got slots
          ``recovery time + k * release_spread_seconds`` for k = 1, 2, ... This replaces
          ``due_delay``: the probe just proved the source is back.
        - Another member while the probe is failing:
          ``max(due_delay, wait + rank * release_spread_seconds)``, where ``wait`` is the time
          until the probe's next result (its next attempt + ``probe_result_seconds``; now +
          ``probe_result_seconds`` when the probe has not been paced since its last failure; 0 if
          that is already past) and ``rank`` is the stream's 1-based position among the other
          members sorted by id. So it never retries sooner than its own backoff asked.
        - Another member while the probe is healthy and the member has no release slot (it failed
          after the release): ``due_delay``.
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.incident is None or not stream.failing:
            return due_delay
        inc = stream.incident
        now = self._clock()
        if inc.probe == stream_id:
            stream.next_attempt = now + due_delay
            return due_delay
        if stream.release_at is not None:
            return max(0.0, stream.release_at - now)
        probe = self._streams.get(inc.probe) if inc.probe is not None else None
        if probe is None or not probe.failing:
            return due_delay
        start = probe.next_attempt if probe.next_attempt is not None else now
        wait = max(0.0, start + self.probe_result_seconds - now)
        ids = inc.members
        index = bisect_left(ids, stream_id)
        rank = index if index > bisect_left(ids, probe.id) else index + 1  # the probe takes no slot
        return max(due_delay, wait + rank * self.release_spread_seconds)

    # -- queries ----------------------------------------------------------------------------------
    def open_incidents(self) -> list[Incident]:
        """Snapshots of the open incidents, oldest first."""
        return [inc.snapshot(self._streams) for inc in self._open.values()]

    def incident_for(self, stream_id: str) -> Incident | None:
        """The open incident the stream belongs to (failing or already recovered), if any."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.incident is None:
            return None
        return stream.incident.snapshot(self._streams)

    def recent_incidents(self, limit: int = 10) -> list[Incident]:
        """Closed incidents, newest first; at most ``limit`` (and at most ``history`` are kept)."""
        if limit <= 0:
            return []
        out: list[Incident] = []
        for snapshot in reversed(self._closed):
            if len(out) >= limit:
                break
            out.append(snapshot)
        return out

    def __len__(self) -> int:
        """Registered streams."""
        return len(self._streams)

    # -- internals --------------------------------------------------------------------------------
    def _category(self, category: str) -> tuple[str, int]:
        index = self._category_index.get(category)
        if index is not None:
            return category, index
        if len(self._category_names) >= _MAX_CATEGORIES - 1:
            category = _OTHER
            index = self._category_index.get(category)
            if index is not None:
                return category, index
        index = len(self._category_names)
        self._category_names.append(category)
        self._category_index[category] = index
        return category, index

    def _append_record(self, now: float, serial: int, category: int) -> None:
        if len(self._ring_time) < self.max_records:
            self._ring_time.append(now)
            self._ring_serial.append(serial)
            self._ring_category.append(category)
            self._ring_pos = len(self._ring_time) % self.max_records
            return
        pos = self._ring_pos
        self._ring_time[pos] = now
        self._ring_serial[pos] = serial
        self._ring_category[pos] = category
        self._ring_pos = (pos + 1) % self.max_records
