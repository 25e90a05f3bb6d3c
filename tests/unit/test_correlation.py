"""Correlator and keys_for_url: grouping, incident life cycle, pacing and memory, on a fake clock."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest

from streamwarden.policy import Category, Correlator, StreamKeys, keys_for_url
from tests.unit.fakes import FakeClock

NET = str(Category.NETWORK)
AUTH = str(Category.AUTH)


def _host(ip: str) -> StreamKeys:
    return keys_for_url(f"rtsp://{ip}:554/stream")


def _correlator(clock: FakeClock, **kwargs: float) -> Correlator:
    return Correlator(clock=clock, **kwargs)  # type: ignore[arg-type]


def _fail_all(corr: Correlator, ids: list[str], category: str = NET) -> None:
    for stream_id in ids:
        corr.record_failure(stream_id, category)


# -- keys_for_url ---------------------------------------------------------------------------------
def test_keys_for_ipv4_url_ignore_port_and_path() -> None:
    a = keys_for_url("rtsp://10.0.0.5:554/cam1")
    b = keys_for_url("rtsp://10.0.0.5:8554/other")
    assert a == b == StreamKeys(host="10.0.0.5", network="10.0.0.0/24", credential=None)


def test_keys_for_hostname_lowercase_and_no_network() -> None:
    keys = keys_for_url("http://CAM-1.Example.com:8080/video.mjpg")
    assert keys == StreamKeys(host="cam-1.example.com", network=None, credential=None)


def test_keys_for_ipv6_url_use_a_64_and_canonical_host() -> None:
    keys = keys_for_url("rtsp://[2001:DB8:0::1]:554/s")
    assert keys.host == "2001:db8::1"
    assert keys.network == "2001:db8::/64"


def test_keys_for_ipv4_mapped_ipv6_are_ipv4() -> None:
    assert keys_for_url("rtsp://[::ffff:10.1.2.3]/s").network == "10.1.2.0/24"


def test_on_loopback_each_port_is_its_own_host_and_there_is_no_network() -> None:
    keys = keys_for_url("rtsp://127.0.0.1:8554/cam")
    assert keys.host == "127.0.0.1:8554"
    assert keys.network is None
    assert keys_for_url("rtsp://127.0.0.1:8555/cam").host != keys.host
    assert keys_for_url("rtsp://127.0.0.1/cam").host == "127.0.0.1"


def test_credential_is_a_short_hash_of_user_password_and_host() -> None:
    keys = keys_for_url("rtsp://admin:s3cret@10.0.0.5:554/cam")
    assert keys.credential == hashlib.sha256(b"admin:s3cret@10.0.0.5").hexdigest()[:12]
    assert "s3cret" not in repr(keys)
    assert keys_for_url("rtsp://admin:s3cret@10.0.0.5:10554/x").credential == keys.credential
    assert keys_for_url("rtsp://admin:s3cret@10.0.0.6/cam").credential != keys.credential
    assert keys_for_url("rtsp://admin:other@10.0.0.5/cam").credential != keys.credential


def test_credential_decodes_percent_escapes_and_accepts_user_only() -> None:
    encoded = keys_for_url("rtsp://ad%6Din:p%40ss@host/")
    assert encoded.credential == hashlib.sha256(b"admin:p@ss@host").hexdigest()[:12]
    assert keys_for_url("rtsp://admin@host/").credential == hashlib.sha256(b"admin:@host").hexdigest()[:12]
    assert keys_for_url("rtsp://@host/").credential is None


@pytest.mark.parametrize("url", [None, "", "/var/video/a.mp4", "file:///var/video/a.mp4", "rtsp://[::1/x"])
def test_files_and_junk_have_no_keys(url: str | None) -> None:
    assert keys_for_url(url) == StreamKeys()


# -- grouping ---------------------------------------------------------------------------------------
def test_below_min_streams_no_incident() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(2):
        corr.register(f"c{i}", _host("10.0.0.5"))
    _fail_all(corr, ["c0", "c1"])
    assert corr.analyze() == []
    assert corr.open_incidents() == []


def test_opens_host_incident_at_min_streams_with_summary() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    ids = [f"cam{i:02d}" for i in range(12)]
    for stream_id in reversed(ids):
        corr.register(stream_id, _host("10.0.0.5"))
    _fail_all(corr, ids)
    corr.record_failure("cam00", NET)
    changes = corr.analyze()
    assert [c.kind for c in changes] == ["opened"]
    inc = changes[0].incident
    assert (inc.id, inc.kind, inc.key) == (1, "host", "10.0.0.5")
    assert inc.stream_ids == tuple(ids)
    assert inc.failing_ids == tuple(ids)
    assert inc.probe == "cam00"
    assert inc.categories == {NET: 13}
    assert inc.summary == "host 10.0.0.5 unreachable: 12 streams"
    assert inc.opened_at == clock.now and inc.closed_at is None
    assert inc.name == "inc-1"
    assert corr.analyze() == []  # nothing new
    assert corr.incident_for("cam03") == inc


def test_summary_wording_follows_dominant_category() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(3):
        corr.register(f"a{i}", _host("10.0.1.1"))
        corr.register(f"d{i}", _host("10.0.2.1"))
    _fail_all(corr, ["a0", "a1", "a2"], AUTH)
    corr.record_failure("a0", NET)
    _fail_all(corr, ["d0", "d1", "d2"], str(Category.DECODE))
    summaries = {c.incident.key: c.incident.summary for c in corr.analyze()}
    assert summaries == {
        "10.0.1.1": "host 10.0.1.1 rejecting credentials: 3 streams",
        "10.0.2.1": "host 10.0.2.1 failing: 3 streams",
    }


def test_failures_outside_the_window_do_not_correlate() -> None:
    clock = FakeClock()
    corr = _correlator(clock, window_seconds=30.0)
    for i in range(3):
        corr.register(f"c{i}", _host("10.0.0.5"))
    _fail_all(corr, ["c0", "c1"])
    clock.advance(31.0)
    corr.record_failure("c2", NET)
    assert corr.analyze() == []
    corr.record_failure("c0", NET)  # c0 fails again: now 2 inside the window, still not 3
    assert corr.analyze() == []
    corr.record_failure("c1", NET)
    assert [c.kind for c in corr.analyze()] == ["opened"]


def test_recovered_streams_do_not_count() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(3):
        corr.register(f"c{i}", _host("10.0.0.5"))
    _fail_all(corr, ["c0", "c1", "c2"])
    corr.record_recovery("c1")
    assert corr.analyze() == []


def test_network_incident_when_hosts_differ_and_host_is_preferred() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    # Three single-camera hosts in one /24, and an NVR with three cameras in the same /24.
    for i in range(3):
        corr.register(f"single{i}", _host(f"10.0.0.{10 + i}"))
        corr.register(f"nvr{i}", _host("10.0.0.99"))
    _fail_all(corr, [f"single{i}" for i in range(3)] + [f"nvr{i}" for i in range(3)])
    opened = {c.incident.kind: c.incident for c in corr.analyze()}
    assert opened["host"].key == "10.0.0.99"
    assert opened["host"].stream_ids == ("nvr0", "nvr1", "nvr2")
    assert opened["network"].key == "10.0.0.0/24"
    assert opened["network"].stream_ids == ("single0", "single1", "single2")
    assert opened["network"].summary == "network 10.0.0.0/24 unreachable: 3 streams"


def test_a_new_host_group_forms_even_if_its_network_has_an_open_incident() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(3):
        corr.register(f"single{i}", _host(f"10.0.0.{10 + i}"))
    _fail_all(corr, [f"single{i}" for i in range(3)])
    assert [c.incident.kind for c in corr.analyze()] == ["network"]
    for i in range(3):
        corr.register(f"nvr{i}", _host("10.0.0.99"))
    _fail_all(corr, [f"nvr{i}" for i in range(3)])
    changes = corr.analyze()
    assert [(c.kind, c.incident.kind) for c in changes] == [("opened", "host")]


def test_a_lone_stream_joins_the_open_incident_of_its_network() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(4):
        corr.register(f"s{i}", _host(f"10.0.0.{10 + i}"))
    _fail_all(corr, ["s0", "s1", "s2"])
    corr.analyze()
    corr.record_failure("s3", NET)
    changes = corr.analyze()
    assert [c.kind for c in changes] == ["updated"]
    assert changes[0].incident.stream_ids == ("s0", "s1", "s2", "s3")
    assert changes[0].incident.categories == {NET: 4}


def test_credential_level_groups_streams_without_host_or_network() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(3):
        corr.register(f"c{i}", StreamKeys(host=f"cam{i}.example", credential="abc123abc123"))
    _fail_all(corr, ["c0", "c1", "c2"], AUTH)
    (change,) = corr.analyze()
    assert (change.incident.kind, change.incident.key) == ("credential", "abc123abc123")
    assert change.incident.summary == "credential abc123abc123 rejecting credentials: 3 streams"


def test_streams_without_keys_never_correlate() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(5):
        corr.register(f"f{i}", keys_for_url(f"/video/{i}.mp4"))
        corr.record_failure(f"f{i}", str(Category.DECODE))
    assert corr.analyze() == []


def test_a_stream_belongs_to_at_most_one_incident() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(6):
        keys = StreamKeys(host=f"10.0.0.{i // 3}", network="10.0.0.0/24", credential="same")
        corr.register(f"c{i}", keys)
        corr.record_failure(f"c{i}", NET)
    opened = [c.incident for c in corr.analyze()]
    assert [i.kind for i in opened] == ["host", "host"]
    members = [s for inc in opened for s in inc.stream_ids]
    assert sorted(members) == [f"c{i}" for i in range(6)]


def test_categories_only_count_the_current_outage() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(3):
        corr.register(f"c{i}", _host("10.0.0.5"))
    corr.record_failure("c0", AUTH)
    corr.record_recovery("c0")
    clock.advance(1.0)
    _fail_all(corr, ["c0", "c1", "c2"])
    (change,) = corr.analyze()
    assert change.incident.categories == {NET: 3}
    corr.record_failure("c1", AUTH)
    assert corr.incident_for("c1") is not None
    assert corr.open_incidents()[0].categories == {NET: 3, AUTH: 1}


# -- closing ----------------------------------------------------------------------------------------
def _open_group(corr: Correlator, n: int = 3, ip: str = "10.0.0.5") -> list[str]:
    ids = [f"c{i}" for i in range(n)]
    for stream_id in ids:
        corr.register(stream_id, _host(ip))
    _fail_all(corr, ids)
    assert [c.kind for c in corr.analyze()] == ["opened"]
    return ids


def test_closes_after_all_recovered_and_the_hold() -> None:
    clock = FakeClock()
    corr = _correlator(clock, close_hold_seconds=5.0)
    ids = _open_group(corr)
    corr.record_recovery("c1")
    corr.record_recovery("c0")  # the probe: c2 is released
    clock.advance(10.0)
    assert [c.kind for c in corr.analyze()] == ["released"]  # c2 still failing: stays open
    assert corr.analyze() == []
    corr.record_recovery("c2")
    clock.advance(4.9)
    assert corr.analyze() == []
    clock.advance(0.1)
    (change,) = corr.analyze()
    assert change.kind == "closed"
    assert change.incident.closed_at == clock.now
    assert change.incident.stream_ids == tuple(ids)
    assert corr.open_incidents() == []
    assert corr.incident_for("c0") is None
    assert corr.recent_incidents() == [change.incident]


def test_a_flapping_member_keeps_the_incident_open() -> None:
    clock = FakeClock()
    corr = _correlator(clock, close_hold_seconds=5.0)
    _open_group(corr)
    for stream_id in ("c2", "c1", "c0"):
        corr.record_recovery(stream_id)
    for _ in range(10):  # c1 flaps every 3 s: never quiet for 5 s
        clock.advance(1.5)
        corr.record_failure("c1", NET)
        assert corr.analyze() == []
        clock.advance(1.5)
        corr.record_recovery("c1")
        assert corr.analyze() == []
    assert len(corr.open_incidents()) == 1
    clock.advance(5.0)
    assert [c.kind for c in corr.analyze()] == ["closed"]


def test_unregistering_every_member_closes_at_once() -> None:
    clock = FakeClock()
    corr = _correlator(clock, close_hold_seconds=60.0)
    ids = _open_group(corr)
    corr.unregister("c0")
    assert [c.kind for c in corr.analyze()] == ["updated"]
    assert corr.open_incidents()[0].stream_ids == ("c1", "c2")
    for stream_id in ids[1:]:
        corr.unregister(stream_id)
    (change,) = corr.analyze()
    assert change.kind == "closed"
    assert change.incident.stream_ids == ()


def test_unregistering_the_failing_ones_closes_after_the_hold() -> None:
    clock = FakeClock()
    corr = _correlator(clock, close_hold_seconds=5.0)
    _open_group(corr)
    corr.record_recovery("c0")
    corr.unregister("c1")
    corr.unregister("c2")
    assert [c.kind for c in corr.analyze()] == ["updated"]  # nobody left to release
    clock.advance(5.0)
    assert [c.kind for c in corr.analyze()] == ["closed"]


def test_recent_incidents_are_newest_first_and_bounded() -> None:
    clock = FakeClock()
    corr = _correlator(clock, close_hold_seconds=0.0, history=3)
    for round_ in range(5):
        ids = _open_group(corr, ip=f"10.0.0.{round_ + 1}")
        for stream_id in ids:
            corr.record_recovery(stream_id)
        assert [c.kind for c in corr.analyze()] == ["closed"]
        clock.advance(1.0)
    recent = corr.recent_incidents(limit=10)
    assert [i.id for i in recent] == [5, 4, 3]
    assert [i.id for i in corr.recent_incidents(limit=2)] == [5, 4]
    assert corr.recent_incidents(limit=0) == []


def test_reregistering_a_stream_starts_it_fresh() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    _open_group(corr)
    corr.register("c0", _host("10.9.9.9"))
    assert corr.incident_for("c0") is None
    assert corr.open_incidents()[0].stream_ids == ("c1", "c2")
    assert len(corr) == 3


def test_events_for_unknown_streams_are_ignored() -> None:
    corr = _correlator(FakeClock())
    corr.record_failure("ghost", NET)
    corr.record_recovery("ghost")
    corr.unregister("ghost")
    assert corr.pace("ghost", 3.0) == 3.0
    assert corr.analyze() == []


# -- pacing -----------------------------------------------------------------------------------------
def test_pace_outside_an_incident_is_unchanged() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    corr.register("solo", _host("10.0.0.5"))
    corr.record_failure("solo", NET)
    corr.analyze()
    assert corr.pace("solo", 7.5) == 7.5


def test_pace_holds_others_behind_the_probe_with_a_stagger() -> None:
    clock = FakeClock()
    corr = _correlator(clock, probe_result_seconds=10.0, release_spread_seconds=0.2)
    _open_group(corr, n=4)
    assert corr.open_incidents()[0].probe == "c0"
    assert corr.pace("c0", 2.0) == 2.0  # the probe keeps its own backoff
    # Others wait for the probe's result at now + 2 + 10, then one spread step each.
    assert corr.pace("c1", 1.0) == pytest.approx(12.2)
    assert corr.pace("c2", 1.0) == pytest.approx(12.4)
    assert corr.pace("c3", 1.0) == pytest.approx(12.6)
    assert corr.pace("c3", 30.0) == 30.0  # never sooner than its own backoff
    clock.advance(5.0)
    assert corr.pace("c1", 1.0) == pytest.approx(7.2)


def test_pace_when_probe_not_paced_yet_or_overdue() -> None:
    clock = FakeClock()
    corr = _correlator(clock, probe_result_seconds=10.0, release_spread_seconds=0.5)
    _open_group(corr)
    assert corr.pace("c2", 0.0) == pytest.approx(11.0)  # probe not paced: now + 10, rank 2
    corr.pace("c0", 1.0)
    clock.advance(100.0)  # the probe's attempt never reported back: do not wait for it
    assert corr.pace("c1", 0.0) == pytest.approx(0.5)
    assert corr.pace("c2", 3.0) == 3.0


def test_probe_recovery_releases_the_others_staggered() -> None:
    clock = FakeClock()
    corr = _correlator(clock, release_spread_seconds=0.2)
    _open_group(corr, n=4)
    corr.pace("c0", 1.0)
    corr.record_recovery("c2")  # recovered on its own: not released, nothing to pace
    clock.advance(1.0)
    corr.record_recovery("c0")
    changes = corr.analyze()
    assert [c.kind for c in changes] == ["released"]
    assert changes[0].incident.failing_ids == ("c1", "c3")
    assert corr.pace("c1", 60.0) == pytest.approx(0.2)
    assert corr.pace("c3", 60.0) == pytest.approx(0.4)
    assert corr.pace("c2", 60.0) == 60.0
    clock.advance(0.3)
    assert corr.pace("c1", 60.0) == 0.0
    assert corr.pace("c3", 60.0) == pytest.approx(0.1)
    # c1 fails again while the probe plays: its own problem, its own backoff.
    corr.record_failure("c1", NET)
    assert corr.pace("c1", 8.0) == 8.0
    # The probe goes down again: everyone waits behind it again.
    corr.record_failure("c0", NET)
    corr.record_failure("c3", NET)
    corr.pace("c0", 4.0)
    assert corr.pace("c1", 1.0) == pytest.approx(14.2)
    assert corr.pace("c3", 1.0) == pytest.approx(14.6)


def test_probe_is_rechosen_when_it_leaves() -> None:
    clock = FakeClock()
    corr = _correlator(clock, probe_result_seconds=10.0, release_spread_seconds=0.2)
    _open_group(corr, n=4)
    corr.record_recovery("c1")
    corr.unregister("c0")
    corr.analyze()
    assert corr.open_incidents()[0].probe == "c2"  # first *failing* member by id
    assert corr.pace("c2", 3.0) == 3.0
    assert corr.pace("c3", 1.0) == pytest.approx(13.4)  # rank 2: c1 (recovered) still takes slot 1


# -- bounds -----------------------------------------------------------------------------------------
def test_failure_ring_is_bounded() -> None:
    clock = FakeClock()
    corr = _correlator(clock, max_records=100)
    corr.register("c", _host("10.0.0.5"))
    for _ in range(1000):
        clock.advance(0.01)
        corr.record_failure("c", NET)
    assert len(corr._ring_time) == len(corr._ring_serial) == len(corr._ring_category) == 100


def test_category_table_is_bounded() -> None:
    clock = FakeClock()
    corr = _correlator(clock)
    for i in range(3):
        corr.register(f"c{i}", _host("10.0.0.5"))
    for n in range(200):
        for i in range(3):
            corr.record_failure(f"c{i}", f"custom{n}")
    (change,) = corr.analyze()
    assert len(corr._category_names) == 64
    assert change.incident.categories["other"] > 0
    assert len(change.incident.categories) == 64


def test_memory_of_1000_streams_failing_continuously_stays_under_1_mb() -> None:
    clock = FakeClock()
    tracemalloc.start()
    try:
        corr = Correlator(clock=clock)
        ids = [f"cam{i:04d}" for i in range(1000)]
        for i, stream_id in enumerate(ids):
            corr.register(stream_id, keys_for_url(f"rtsp://admin:pw@10.0.{i % 5}.{i % 50 + 1}:554/s{i}"))
        for _ in range(60):  # 60,000 failures: the 20,000-record ring wraps three times
            clock.advance(0.5)
            for stream_id in ids:
                corr.record_failure(stream_id, NET)
            corr.analyze()
            for stream_id in ids[::2]:
                corr.pace(stream_id, 1.0)
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(corr.open_incidents()) > 0
    assert current < 1_000_000, f"{current} bytes"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_seconds": 0.0},
        {"min_streams": 1},
        {"max_records": 0},
        {"release_spread_seconds": -1.0},
        {"close_hold_seconds": -1.0},
        {"probe_result_seconds": -0.1},
        {"history": -1},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Correlator(**kwargs)  # type: ignore[arg-type]
