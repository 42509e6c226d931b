"""What a reversal task returns and what the worker's metrics count of it, when its
delivery took other waiting reversals along (TAKE_WAITING)."""

from __future__ import annotations

import uuid
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from worker import metrics
from worker.tasks import _outcomes


def test_a_delivery_returns_its_outcome_or_every_outcome_counted() -> None:
    own, taken, refused = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert _outcomes({own: "REVERSED"}) == "REVERSED"
    assert _outcomes({own: "REVERSED", taken: "REVERSED", refused: "FAILED"}) == {
        "REVERSED": 2,
        "FAILED": 1,
    }


def test_the_metrics_count_every_reversal_a_delivery_took_along(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counted: Counter[str] = Counter()

    class Series:
        def __init__(self, outcome: str) -> None:
            self.outcome = outcome

        def inc(self, amount: float = 1) -> None:
            counted[self.outcome] += int(amount)

    def unused(*_: Any) -> Any:
        return SimpleNamespace(observe=lambda _seconds: None, inc=lambda _amount=1: None)

    fake = SimpleNamespace(
        reversals=SimpleNamespace(labels=Series), duration=SimpleNamespace(labels=unused)
    )
    monkeypatch.setattr(metrics._State, "metrics", fake)
    task = SimpleNamespace(name=metrics.REVERSE_TASK)
    metrics._task_finished("a", task, {"REVERSED": 49, "FAILED": 1}, "SUCCESS")
    metrics._task_finished("b", task, "IGNORED", "SUCCESS")
    metrics._task_finished("c", task, "REVERSED", "SUCCESS")
    assert counted == {"REVERSED": 50, "FAILED": 1, "IGNORED": 1}
