"""StrategySelector and StrategyStats: exploration, exploitation, per-outage rules, learning."""

from __future__ import annotations

import json

import pytest

from streamwarden.policy import Category, Strategy, StrategySelector, StrategyStats
from streamwarden.policy.strategies import DEFAULT_ORDER, FALLBACK_ORDER
from tests.unit.fakes import FakeClock

NET = str(Category.NETWORK)
RN, SW, RC, RS = Strategy.RECONNECT_NOW, Strategy.SWITCH_TRANSPORT, Strategy.RECONNECT, Strategy.RESTART
RTSP = frozenset(Strategy)
FILE = frozenset({RC, RN, RS})  # no transport to switch


def _run_outage(selector: StrategySelector, works: set[Strategy], category: str = NET) -> list[Strategy]:
    """Drive one outage to its end; return the strategies tried, in order (bounded)."""
    selector.begin_outage(category)
    tried = []
    for _ in range(20):
        strategy = selector.choose(RTSP)
        tried.append(strategy)
        if strategy in works:
            selector.attempt_succeeded(1.0)
            return tried
        selector.attempt_failed()
    raise AssertionError(f"no recovery in 20 attempts: {tried}")


def test_learns_that_switch_transport_works() -> None:
    selector = StrategySelector(min_trials=2, clock=FakeClock())
    firsts = [_run_outage(selector, {SW})[0] for _ in range(8)]
    # Exploration: reconnect_now is tried first until it has its 2 trials, then the untried ones.
    assert firsts[:3] == [RN, RN, RC]
    assert firsts[-3:] == [SW, SW, SW]
    assert _run_outage(selector, {SW}) == [SW]
    assert selector.preferred(NET) is SW
    stats = selector.stats.as_dict()[NET]
    assert stats["switch_transport"]["success_rate"] == 1.0
    assert stats["switch_transport"]["successes"] == stats["switch_transport"]["attempts"] == 9
    for name in ("reconnect", "reconnect_now", "restart"):
        assert (stats[name]["attempts"] or 0) >= 2
        assert stats[name]["success_rate"] == 0.0
        assert stats[name]["mean_seconds"] is None
    json.dumps(selector.stats.as_dict())  # JSON-friendly


def test_never_repeats_a_failed_strategy_in_one_outage_except_restart() -> None:
    selector = StrategySelector(min_trials=0, clock=FakeClock())
    tried = []
    selector.begin_outage(NET)
    for _ in range(6):
        tried.append(selector.choose(RTSP))
        selector.attempt_failed()
    assert tried == [RN, SW, RC, RS, RS, RS]


def test_a_new_outage_forgets_what_failed() -> None:
    selector = StrategySelector(min_trials=0, clock=FakeClock())
    selector.begin_outage(NET)
    assert selector.choose(RTSP) is RN
    selector.attempt_failed()
    selector.begin_outage(NET)
    assert selector.choose(RTSP) is RN


def test_applicable_filters_but_restart_is_always_there() -> None:
    selector = StrategySelector(min_trials=0, clock=FakeClock())
    selector.begin_outage(NET)
    assert selector.choose(FILE) is RN
    selector.attempt_failed()
    assert selector.choose(FILE) is RC  # switch_transport skipped: not applicable
    selector.attempt_failed()
    assert selector.choose(frozenset()) is RS


def test_prefers_success_rate_then_speed_then_order() -> None:
    clock = FakeClock()
    stats = StrategyStats()
    for _ in range(4):
        stats.record(NET, RN, succeeded=True, seconds=5.0)
        stats.record(NET, SW, succeeded=True, seconds=2.0)
        stats.record(NET, RC, succeeded=False)
        stats.record(NET, RS, succeeded=True, seconds=2.0)
    selector = StrategySelector(min_trials=2, stats=stats, clock=clock)
    selector.begin_outage(NET)
    assert selector.choose(RTSP) is SW  # same rate as RN and RS; faster than RN; before RS in order
    selector.attempt_failed()  # switch_transport now 4/5
    assert selector.choose(RTSP) is RS  # 100 % like reconnect_now, but faster
    selector.attempt_failed()  # restart now 4/5, still a candidate (the last resort)
    assert selector.choose(RTSP) is RN  # the only 100 % left


def test_hint_goes_first_until_it_fails() -> None:
    selector = StrategySelector(min_trials=0, clock=FakeClock())
    selector.begin_outage(str(Category.PROTOCOL))
    selector.hint(SW)
    assert selector.choose(RTSP) is SW
    selector.attempt_failed()
    assert selector.choose(RTSP) is RN
    # A hint outside the category's order still goes first (the classifier knows best) ...
    selector.begin_outage(str(Category.AUTH))
    selector.hint(SW)
    assert selector.choose(RTSP) is SW
    # ... but not if it does not apply to this stream.
    selector.begin_outage(str(Category.AUTH))
    selector.hint(SW)
    assert selector.choose(FILE) is RS


def test_hint_is_cleared_by_a_new_outage() -> None:
    selector = StrategySelector(min_trials=0, clock=FakeClock())
    selector.begin_outage(NET)
    selector.hint(RS)
    selector.begin_outage(NET)
    assert selector.choose(RTSP) is RN


def test_default_orders() -> None:
    selector = StrategySelector()
    assert selector.order_for("network") == (RN, SW, RC, RS)
    assert selector.order_for("auth") == (RS,)
    assert selector.order_for("decode") == (RS,)
    assert selector.order_for("pipeline") == (RS,)
    assert selector.order_for("resource") == (RS,)
    assert selector.order_for("something-new") == FALLBACK_ORDER == (RC, RS)
    assert set(DEFAULT_ORDER) == {str(c) for c in Category}


def test_custom_order_overrides_one_category_and_keeps_restart_last() -> None:
    selector = StrategySelector(order={"network": [RS, RC, RC]}, min_trials=0)
    assert selector.order_for("network") == (RC, RS)
    assert selector.order_for("auth") == (RS,)


def test_choose_without_begin_outage_assumes_unknown() -> None:
    selector = StrategySelector(min_trials=0, clock=FakeClock())
    assert selector.choose(RTSP) is RC
    assert selector.outage_category == "unknown"


def test_success_time_defaults_to_time_since_choose() -> None:
    clock = FakeClock()
    selector = StrategySelector(min_trials=0, clock=clock)
    selector.begin_outage(NET)
    selector.choose(RTSP)
    clock.advance(3.5)
    selector.attempt_succeeded()
    record = selector.stats.get(NET, RN)
    assert (record.attempts, record.successes, record.mean_seconds) == (1, 1, 3.5)
    assert selector.outage_category is None


def test_results_without_a_choice_are_ignored() -> None:
    selector = StrategySelector(clock=FakeClock())
    selector.attempt_failed()
    selector.attempt_succeeded(1.0)
    selector.begin_outage(NET)
    selector.attempt_failed()
    assert selector.stats.as_dict() == {}


def test_preferred_is_none_before_any_attempt() -> None:
    selector = StrategySelector(clock=FakeClock())
    assert selector.preferred(NET) is None
    _run_outage(selector, {RN})
    assert selector.preferred(NET) is RN  # still exploring: reconnect_now has 1 of 2 trials


def test_stats_summary_and_dict() -> None:
    stats = StrategyStats()
    stats.record(NET, RN, succeeded=True, seconds=2.0)
    stats.record(NET, RN, succeeded=True, seconds=4.0)
    stats.record(NET, RN, succeeded=False)
    stats.record(NET, RN, succeeded=True, seconds=-1.0)  # clock trouble: counted as 0 s
    record = stats.get(NET, RN)
    assert record.attempts == 4
    assert record.successes == 3
    assert record.success_rate == 0.75
    assert record.mean_seconds == 2.0
    assert (record.fastest_seconds, record.slowest_seconds) == (0.0, 4.0)
    assert stats.get("auth", RS).attempts == 0
    assert stats.as_dict() == {NET: {"reconnect_now": record.as_dict()}}


def test_stats_categories_are_bounded() -> None:
    stats = StrategyStats(max_categories=4)
    for i in range(10):
        stats.record(f"c{i}", RS, succeeded=False)
    assert stats.categories() == ["c0", "c1", "c2", "other"]
    assert stats.get("other", RS).attempts == 7
    assert stats.attempts("c9", RS) == 7  # folded into "other"


def test_stats_can_be_shared() -> None:
    stats = StrategyStats()
    a = StrategySelector(stats=stats, min_trials=1, clock=FakeClock())
    b = StrategySelector(stats=stats, min_trials=1, clock=FakeClock())
    _run_outage(a, {RN})
    b.begin_outage(NET)
    assert b.choose(RTSP) is SW  # reconnect_now was already explored by a


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        StrategySelector(min_trials=-1)
    with pytest.raises(ValueError):
        StrategyStats(max_categories=0)
    with pytest.raises(ValueError):
        StrategySelector(order={"network": ["teleport"]})  # type: ignore[list-item]
