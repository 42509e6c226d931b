"""The bench's own check of a run (what CI's `reversals bench --quick` relies on)."""

from __future__ import annotations

import copy
from typing import Any

from bench.report import REQUIRED, problems

COMPLETE: dict[str, Any] = {
    **dict.fromkeys(REQUIRED, 1.0),
    "anchor_pgbench_tps": None,  # pgbench not installed: the key is there, null
    "drain": {"n": 5, "outcomes": {"REVERSED": 5}},
    "bulk": {"n": 5, "outcomes": {"REVERSED": 5}},
    "e2e": {"requests": 3, "reversed": 3},
    "intake": {"statuses": {"202": 40, "429": 2}, "seconds": 20.0, "ran_out_of_events": False},
    "intake_floor": {"statuses": {"202": 90}, "seconds": 20.0, "ran_out_of_events": False},
}


def test_a_complete_run_has_no_problem() -> None:
    assert problems(COMPLETE) == []


def test_a_missing_figure_or_an_unfinished_phase_is_a_problem() -> None:
    broken = copy.deepcopy(COMPLETE)
    broken["intake_p99_ms"] = None
    del broken["anchor_pgbench_tps"]
    broken["bulk"]["outcomes"] = {"REVERSED": 4, "FAILED": 1}
    broken["e2e"]["reversed"] = 2
    broken["intake"]["statuses"]["500"] = 1
    broken["intake_floor"]["statuses"]["401"] = 3
    broken["intake"].update(ran_out_of_events=True, seconds=11.7)
    found = problems(broken)
    assert len(found) == 7, found
    assert "intake: ran out of events after 11.7 s" in " ".join(found)
    assert any("intake_p99_ms" in p for p in found)
    assert any(p.startswith("bulk:") for p in found)
    assert any(p.startswith("intake floor:") for p in found)


def test_the_ratios_divide_by_each_anchors_mean_of_its_rounds_before_and_after() -> None:
    from bench.run import _bracket

    before = {"noop_per_s": 600.0, "tx_per_s": 500.0, "publish_per_s": 1500.0}
    after = {"noop_per_s": 800.0, "tx_per_s": 400.0, "publish_per_s": None}
    anchors = _bracket(before, after)
    assert anchors["noop_per_s"] == 700.0
    assert anchors["tx_per_s"] == 450.0
    assert anchors["tx_per_s_after_vs_before"] == 0.8
    # A round that measured nothing leaves the other's figure, and no spread.
    assert anchors["publish_per_s"] == 1500.0
    assert anchors["publish_per_s_after_vs_before"] is None
    assert anchors["before"] is before
    assert anchors["after"] is after
