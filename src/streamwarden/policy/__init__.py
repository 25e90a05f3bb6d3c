"""Pure-Python recovery policy: backoff, breaker, quarantine, reconnect budget, error classes,
transport degradation, cross-stream correlation, error-rate alarms, adaptive strategies and
resource shedding.

Nothing here imports GStreamer, so every decision about *when* and *whether* to reconnect can be
unit-tested with a fake clock and a seeded random generator.
"""

from streamwarden.policy.backoff import Backoff, BackoffPolicy, JitterMode
from streamwarden.policy.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from streamwarden.policy.classify import (
    DEFAULT_RULES,
    Action,
    Category,
    Classification,
    Classifier,
    ErrorReport,
    Rule,
    Transience,
    rtsp_status_from_text,
    rule_from_mapping,
)
from streamwarden.policy.correlation import Correlator, Incident, IncidentChange, StreamKeys, keys_for_url
from streamwarden.policy.degradation import DegradationChange, DegradationDetector, DegradationThresholds
from streamwarden.policy.error_rate import ErrorRateDetector, RateChange
from streamwarden.policy.pressure import (
    ResourceLimits,
    ResourceSample,
    ShedAction,
    ShedLevel,
    ShedPlanner,
    StreamLoad,
)
from streamwarden.policy.quarantine import Quarantine, QuarantinePolicy
from streamwarden.policy.strategies import Strategy, StrategyRecord, StrategySelector, StrategyStats
from streamwarden.policy.token_bucket import TokenBucket

__all__ = [
    "DEFAULT_RULES",
    "Action",
    "Backoff",
    "BackoffPolicy",
    "BreakerPolicy",
    "BreakerState",
    "Category",
    "CircuitBreaker",
    "Classification",
    "Classifier",
    "Correlator",
    "DegradationChange",
    "DegradationDetector",
    "DegradationThresholds",
    "ErrorRateDetector",
    "ErrorReport",
    "Incident",
    "IncidentChange",
    "JitterMode",
    "Quarantine",
    "QuarantinePolicy",
    "RateChange",
    "ResourceLimits",
    "ResourceSample",
    "Rule",
    "ShedAction",
    "ShedLevel",
    "ShedPlanner",
    "Strategy",
    "StrategyRecord",
    "StrategySelector",
    "StrategyStats",
    "StreamKeys",
    "StreamLoad",
    "TokenBucket",
    "Transience",
    "keys_for_url",
    "rtsp_status_from_text",
    "rule_from_mapping",
]
