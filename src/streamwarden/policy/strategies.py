"""Adaptive recovery: learn which way of recovering works for a stream's failures.

Cameras differ: one recovers from a dropped connection if we simply reconnect at once, another
only over TCP after its UDP path broke, a third needs a full pipeline restart. A fixed reaction
wastes attempts (and minutes of video) on the ones it does not suit. The selector keeps success
statistics per (error category, strategy), explores each candidate a few times, then prefers what
actually worked, falling back within one outage without repeating what just failed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "DEFAULT_ORDER",
    "FALLBACK_ORDER",
    "Strategy",
    "StrategyRecord",
    "StrategySelector",
    "StrategyStats",
]


class Strategy(StrEnum):
    """Ways to bring a failed stream back, cheapest first."""

    RECONNECT = "reconnect"
    """A new connection attempt with the same transport, after the backoff delay that is due."""

    RECONNECT_NOW = "reconnect_now"
    """Same transport, no wait: right for one-off resets (a dropped TCP session, a 454)."""

    SWITCH_TRANSPORT = "switch_transport"
    """RTSP only: retry at once over the other of TCP/UDP (a firewall or NAT broke one of them)."""

    RESTART = "restart"
    """Tear the pipeline down and rebuild it with the configured transport after the backoff delay.
    The universal fallback: always applicable, and the only strategy an outage may repeat."""


_RN, _SW, _RC, _RS = Strategy.RECONNECT_NOW, Strategy.SWITCH_TRANSPORT, Strategy.RECONNECT, Strategy.RESTART

# Keys are Category values. Network and protocol trouble is often a reset (try at once), sometimes
# a broken transport; auth, decode, pipeline and resource failures are not fixed by reconnecting
# the same pipeline (new credentials or settings arrive with a restart). not_found: the path may
# come back, so wait and retry before rebuilding.
DEFAULT_ORDER: Mapping[str, tuple[Strategy, ...]] = MappingProxyType(
    {
        "network": (_RN, _SW, _RC, _RS),
        "protocol": (_RN, _SW, _RS),
        "not_found": (_RC, _RS),
        "auth": (_RS,),
        "decode": (_RS,),
        "pipeline": (_RS,),
        "resource": (_RS,),
        "internal": (_RS,),
    }
)
FALLBACK_ORDER: tuple[Strategy, ...] = (_RC, _RS)  # any category not listed ("unknown", custom ones)
_UNKNOWN = "unknown"
_OTHER = "other"


@dataclass(frozen=True)
class StrategyRecord:
    """How one strategy did for one category; times are seconds to recover, successes only."""

    attempts: int
    successes: int
    success_rate: float  # 0.0 before any attempt
    mean_seconds: float | None
    fastest_seconds: float | None
    slowest_seconds: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-friendly form."""
        return {
            "attempts": self.attempts,
            "successes": self.successes,
            "success_rate": self.success_rate,
            "mean_seconds": self.mean_seconds,
            "fastest_seconds": self.fastest_seconds,
            "slowest_seconds": self.slowest_seconds,
        }


class _Tally:
    __slots__ = ("attempts", "fastest", "slowest", "successes", "total_seconds")

    def __init__(self) -> None:
        self.attempts = 0
        self.successes = 0
        self.total_seconds = 0.0
        self.fastest = math.inf
        self.slowest = 0.0


class StrategyStats:
    """Attempt and success counts per (category, strategy); may be shared by several selectors.

    Memory is bounded by ``max_categories`` x 4 strategies; further categories count as "other".
    """

    def __init__(self, max_categories: int = 32) -> None:
        if max_categories < 1:
            raise ValueError(f"max_categories must be >= 1: {max_categories}")
        self.max_categories = max_categories
        self._tallies: dict[str, dict[Strategy, _Tally]] = {}

    def record(
        self, category: str, strategy: Strategy, succeeded: bool, seconds: float | None = None
    ) -> None:
        """Count one attempt; ``seconds`` (time to recover) only matters for successes."""
        tally = self._tally(str(category), Strategy(strategy))
        tally.attempts += 1
        if succeeded:
            tally.successes += 1
            if seconds is not None:
                seconds = max(0.0, seconds)
                tally.total_seconds += seconds
                tally.fastest = min(tally.fastest, seconds)
                tally.slowest = max(tally.slowest, seconds)

    def attempts(self, category: str, strategy: Strategy) -> int:
        """Attempts recorded so far (0 if none)."""
        tally = self._tallies.get(self._key(str(category)), {}).get(strategy)
        return tally.attempts if tally is not None else 0

    def get(self, category: str, strategy: Strategy) -> StrategyRecord:
        """The summary for one pair (all zero/None if never tried)."""
        tally = self._tallies.get(self._key(str(category)), {}).get(strategy)
        if tally is None:
            return StrategyRecord(0, 0, 0.0, None, None, None)
        timed = tally.fastest != math.inf
        return StrategyRecord(
            attempts=tally.attempts,
            successes=tally.successes,
            success_rate=tally.successes / tally.attempts if tally.attempts else 0.0,
            mean_seconds=tally.total_seconds / tally.successes if timed else None,
            fastest_seconds=tally.fastest if timed else None,
            slowest_seconds=tally.slowest if timed else None,
        )

    def categories(self) -> list[str]:
        """Categories with at least one attempt, sorted."""
        return sorted(self._tallies)

    def as_dict(self) -> dict[str, dict[str, dict[str, float | int | None]]]:
        """``{category: {strategy: {attempts, successes, success_rate, ...}}}``, sorted, for the API."""
        return {
            category: {
                str(strategy): self.get(category, strategy).as_dict()
                for strategy in sorted(self._tallies[category], key=list(Strategy).index)
            }
            for category in sorted(self._tallies)
        }

    def _key(self, category: str) -> str:
        if category in self._tallies or len(self._tallies) < self.max_categories - 1:
            return category
        return _OTHER

    def _tally(self, category: str, strategy: Strategy) -> _Tally:
        per_strategy = self._tallies.setdefault(self._key(category), {})
        tally = per_strategy.get(strategy)
        if tally is None:
            tally = per_strategy[strategy] = _Tally()
        return tally


class StrategySelector:
    """Picks the next recovery strategy for one stream's outage and learns from the result.

    Per outage (``begin_outage`` .. ``attempt_succeeded``): candidates are the category's order
    (``DEFAULT_ORDER``, else ``FALLBACK_ORDER``; ``order`` overrides per category; RESTART is always
    appended) filtered by what the caller says is applicable (RESTART always is) minus what already
    failed in this outage (except RESTART). ``choose`` then returns, in this precedence: the hinted
    strategy; the first candidate tried fewer than ``min_trials`` times overall (exploration);
    the best candidate by success rate, then faster mean recovery, then order.

    Not thread-safe: one selector per stream, owned by its supervisor. Pass a shared ``stats`` to
    pool learning across streams (e.g. the cameras of one NVR).
    """

    def __init__(
        self,
        order: Mapping[str, Sequence[Strategy]] | None = None,
        min_trials: int = 2,
        *,
        stats: StrategyStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_trials < 0:
            raise ValueError(f"min_trials must be >= 0: {min_trials}")
        orders: dict[str, tuple[Strategy, ...]] = dict(DEFAULT_ORDER)
        for category, strategies in (order or {}).items():
            orders[str(category)] = tuple(dict.fromkeys(Strategy(s) for s in strategies))
        # RESTART closes every order so an outage never runs out of things to try.
        self._orders = {c: (*(s for s in o if s is not _RS), _RS) for c, o in orders.items()}
        self._fallback = FALLBACK_ORDER
        self.min_trials = min_trials
        self._stats = stats if stats is not None else StrategyStats()
        self._clock = clock
        self._category: str | None = None
        self._failed: set[Strategy] = set()
        self._hint: Strategy | None = None
        self._last: Strategy | None = None
        self._last_at = 0.0

    @property
    def stats(self) -> StrategyStats:
        """The statistics this selector learns from and feeds."""
        return self._stats

    @property
    def outage_category(self) -> str | None:
        """Category of the outage in progress, None when the stream is healthy."""
        return self._category

    def order_for(self, category: str) -> tuple[Strategy, ...]:
        """The configured order for ``category`` (always ending with RESTART)."""
        return self._orders.get(str(category), self._fallback)

    def begin_outage(self, category: str) -> None:
        """Start a new outage: forget what failed and any hint. Call on the first failure."""
        self._category = str(category)
        self._failed.clear()
        self._hint = None
        self._last = None

    def hint(self, strategy: Strategy) -> None:
        """Try ``strategy`` first in this outage (e.g. the classifier said SWITCH_TRANSPORT).

        It stays first until it fails once; it is still subject to ``applicable``.
        """
        if self._category is None:
            self.begin_outage(_UNKNOWN)
        self._hint = Strategy(strategy)

    def choose(self, applicable: Set[Strategy] = frozenset(Strategy)) -> Strategy:
        """The strategy for the next attempt; remember it for ``attempt_failed/succeeded``.

        Without ``begin_outage`` an outage of category "unknown" is assumed.
        """
        if self._category is None:
            self.begin_outage(_UNKNOWN)
        assert self._category is not None
        pick = self._pick(self._category, applicable, self._failed, self._hint)
        self._last = pick
        self._last_at = self._clock()
        return pick

    def attempt_failed(self) -> None:
        """The last chosen strategy did not bring the stream back; ignored if nothing was chosen."""
        last, category = self._last, self._category
        if last is None or category is None:
            return
        self._stats.record(category, last, succeeded=False)
        self._failed.add(last)
        if self._hint is last:
            self._hint = None
        self._last = None

    def attempt_succeeded(self, seconds: float | None = None) -> None:
        """The last chosen strategy worked: count it and end the outage.

        ``seconds`` is the time to recover; by default the time since ``choose()`` returned it,
        which includes any backoff wait (so RECONNECT_NOW beats RECONNECT on equal success).
        """
        last, category = self._last, self._category
        if last is None or category is None:
            return
        if seconds is None:
            seconds = self._clock() - self._last_at
        self._stats.record(category, last, succeeded=True, seconds=seconds)
        self._category = None
        self._failed.clear()
        self._hint = None
        self._last = None

    def preferred(self, category: str, applicable: Set[Strategy] = frozenset(Strategy)) -> Strategy | None:
        """What a fresh outage of ``category`` would start with now; None before any attempt was recorded."""
        category = str(category)
        order = self.order_for(category)
        if not any(self._stats.attempts(category, s) for s in order):
            return None
        return self._pick(category, applicable, set(), None)

    def _pick(
        self, category: str, applicable: Set[Strategy], failed: Set[Strategy], hint: Strategy | None
    ) -> Strategy:
        order = self.order_for(category)
        candidates = [s for s in order if s is _RS or (s in applicable and s not in failed)]
        if hint is not None and (hint is _RS or (hint in applicable and hint not in failed)):
            return hint
        stats = self._stats
        for strategy in candidates:
            if stats.attempts(category, strategy) < self.min_trials:
                return strategy

        def score(item: tuple[int, Strategy]) -> tuple[float, float, int]:
            index, strategy = item
            record = stats.get(category, strategy)
            mean = record.mean_seconds if record.mean_seconds is not None else math.inf
            return (-record.success_rate, mean, index)

        return min(enumerate(candidates), key=score)[1]
