"""The chaos runner end to end, short: four streams, faults on a seeded schedule, then the report.

``make chaos`` runs the long version (8 streams, 120 s, 1,000 churn cycles).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamwarden.chaos import FAULT_KINDS, ChaosOptions, run_chaos, to_markdown

pytestmark = pytest.mark.integration

KINDS = tuple(FAULT_KINDS)  # net_bandwidth included: its recorder failure now finalizes


def test_a_short_chaos_run_loses_nothing_outside_fault_windows(gst_init: None, tmp_path: Path) -> None:
    options = ChaosOptions(streams=4, duration=25, seed=11, workdir=tmp_path, kinds=KINDS, gap=(0.2, 0.8))
    report = run_chaos(options)
    text = to_markdown(report)
    print(text)
    assert len(report.faults) >= 8, text
    assert not report.not_playing, text
    assert not report.unhandled, report.unhandled
    assert not report.credential_leaks, report.credential_leaks
    assert not report.unplayable, report.unplayable  # .part leftovers included: each is probed
    # A recorder failure (net_bandwidth's timestamping error too) finalizes its segment at the retry.
    assert not report.part_leftovers, text
    assert report.wire_loss_steady == 0 and not any(report.holes.values()), text
    assert report.wire_forwarded == report.wire_ingested + report.wire_loss_outage, text
    assert all(k.not_recovered == 0 for k in report.kinds.values()), text
    detected = [f for f in report.faults if f.kind.outage and f.left_playing]
    assert detected and all(f.recovery is not None for f in detected), text
    assert report.injected_exceptions <= sum(f.kind.name == "callback_exception" for f in report.faults)
    assert "| fault | count |" in text and "frames lost outside fault windows" in text
