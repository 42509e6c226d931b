"""A process's start-up heap is set aside from the garbage collector (worker.heap)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery import signals

from worker import db, heap
from worker.models import Event


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Whatever a test freezes is collectable again afterwards, at the same pace."""
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.mark.usefixtures("unfrozen")
def test_freezing_sets_aside_what_exists_and_still_collects_what_comes_after() -> None:
    alive = Node()
    heap.freeze()
    assert gc.get_freeze_count() > 1000  # the imported modules, at least
    assert Event.__mapper__.configured  # configured before, so frozen with the rest
    later = Node()
    gone = weakref.ref(later)
    kept = weakref.ref(alive)
    del later, alive
    gc.collect()
    assert gone() is None  # garbage made after the freeze is collected
    assert kept() is not None  # what was frozen is never collected


@pytest.mark.usefixtures("unfrozen")
def test_after_the_freeze_cycles_are_collected_less_often_but_without_being_asked() -> None:
    heap.freeze()
    assert gc.get_threshold() == heap.THRESHOLDS
    assert gc.isenabled()
    cycle = Node()
    gone = weakref.ref(cycle)
    del cycle
    kept: list[list[int]] = [[] for _ in range(heap.THRESHOLDS[0] // 2)]  # under the threshold
    assert gone() is not None  # no collection yet: less often than CPython's 700
    kept += [[] for _ in range(heap.THRESHOLDS[0])]  # past it: the young generation
    assert gone() is None
    assert len(kept) > heap.THRESHOLDS[0]


def test_a_worker_freezes_before_forking_and_in_each_pool_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(heap, "freeze", lambda: calls.append("freeze"))
    signals.worker_init.send(sender=None)
    assert calls == ["freeze"]
    # The pool process's signal also drops the parent's engine (worker.db): not
    # this process's, which other tests use.
    unbuilt = SimpleNamespace(cache_info=lambda: SimpleNamespace(currsize=0))
    monkeypatch.setattr(db, "get_engine", unbuilt)
    signals.worker_process_init.send(sender="test")
    assert calls == ["freeze", "freeze"]


def test_the_api_process_freezes_once_its_app_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from api_stub import app as api_app
    from worker import logs

    calls: list[str] = []
    monkeypatch.setattr(heap, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(logs, "configure", lambda _level: None)
    assert api_app.app_factory() is not None
    assert calls == ["freeze"]
