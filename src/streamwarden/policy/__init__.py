"""Pure-Python recovery policy: backoff, circuit breaker, quarantine, reconnect budget, error classes,
and transport degradation.

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
from streamwarden.policy.degradation import DegradationChange, DegradationDetector, DegradationThresholds
from streamwarden.policy.quarantine import Quarantine, QuarantinePolicy
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
    "DegradationChange",
    "DegradationDetector",
    "DegradationThresholds",
    "ErrorReport",
    "JitterMode",
    "Quarantine",
    "QuarantinePolicy",
    "Rule",
    "TokenBucket",
    "Transience",
    "rtsp_status_from_text",
    "rule_from_mapping",
]
