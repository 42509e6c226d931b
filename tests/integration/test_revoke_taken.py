"""A delivery that took waiting reversals along has the workers drop their own
messages unopened (worker.tasks.revoke_taken), once its transaction committed.

The task runs eagerly in this process (`task.apply`), on committed rows, as the
worker calls it; Celery's broadcast is the only thing replaced, to see what it is
asked to revoke (tests/e2e has a real worker drop them).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import World
from worker.celery_app import app
from worker.db import get_sessionmaker
from worker.tasks import reverse_event


def _backlog(world: World, size: int) -> tuple[list[uuid.UUID], dict[uuid.UUID, str]]:
    """Reversals requested and not delivered, the customer's purchases after a first."""
    customer = uuid.uuid4()
    world.event(customer, accumulate=[500])
    events = [world.event(customer, accumulate=[40], redeem=[30]) for _ in range(size)]
    for event_id in events:
        assert world.request_reversal(event_id) == 202
    return events, {e: world.message_id(e) for e in events}


def _revokes(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[list[str]]:
    asked: list[list[str]] = []

    def revoke(task_ids: list[str], **_: Any) -> None:
        asked.append(task_ids)
        if fail:
            raise ConnectionError("broker unreachable")

    monkeypatch.setattr(app.control, "revoke", revoke)
    return asked


def test_the_messages_of_reversals_taken_along_are_revoked_once_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    factory: Callable[[], Any] = get_sessionmaker()
    world = World.create(factory)
    events, messages = _backlog(world, 4)
    asked = _revokes(monkeypatch)
    first = messages[events[0]]
    outcome = reverse_event.apply(args=(str(events[0]), first), task_id=first, throw=True).get()
    assert outcome == {"REVERSED": 4}
    assert asked == [[messages[e] for e in events[1:]]]  # not its own
    # A message the broadcast missed finds its event done, and is not revoked again.
    second = messages[events[1]]
    outcome = reverse_event.apply(args=(str(events[1]), second), task_id=second, throw=True).get()
    assert outcome == "IGNORED"
    assert len(asked) == 1
    world.check(world.get(events[0]).customer_id)


def test_a_delivery_that_took_none_revokes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World.create(get_sessionmaker())
    events, messages = _backlog(world, 1)
    asked = _revokes(monkeypatch)
    only = messages[events[0]]
    assert reverse_event.apply(args=(str(events[0]), only), task_id=only).get() == "REVERSED"
    assert asked == []
    world.check(world.get(events[0]).customer_id)


def test_a_revoke_that_fails_changes_no_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World.create(get_sessionmaker())
    events, messages = _backlog(world, 3)
    asked = _revokes(monkeypatch, fail=True)
    first = messages[events[0]]
    outcome = reverse_event.apply(args=(str(events[0]), first), task_id=first, throw=True).get()
    assert outcome == {"REVERSED": 3}
    assert len(asked) == 1
    for event_id in events:
        assert world.get(event_id).status == "REVERSED"
    world.check(world.get(events[0]).customer_id)
