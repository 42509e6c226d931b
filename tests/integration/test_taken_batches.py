"""Batch messages among the reversals a delivery takes along: a batch's delivery takes
waiting reversals too, and a message is revoked only when none of its events is left
in flight (worker.tasks.revoke_taken, worker.processing.finished_messages).

Committed rows, as in test_revoke_taken (its helpers). This module's name sorts after
test_take_waiting's, whose plans read statistics of the whole table.
"""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_revoke_taken import _backlog, _revokes
from tests.support import World
from worker.db import get_sessionmaker, unit_of_work
from worker.intake import request_reversal
from worker.settings import get_settings
from worker.tasks import reverse_event, reverse_events


def _batch_behind_a_single(world: World) -> tuple[uuid.UUID, str, list[uuid.UUID], str]:
    """A reversal with its own message, then two travelling together in a batch message."""
    customer = uuid.uuid4()
    world.event(customer, accumulate=[500])
    single, *batch = [world.event(customer, accumulate=[40], redeem=[30]) for _ in range(3)]
    assert world.request_reversal(single) == 202
    message = str(uuid.uuid4())
    with unit_of_work(world.factory) as session:
        for event_id in batch:
            request_reversal(session, world.brand_id, event_id, "refund", batch_message_id=message)
    return single, world.message_id(single), batch, message


@pytest.mark.parametrize("take", [1, 2])
def test_a_batch_message_is_revoked_only_once_all_of_its_events_were_taken(
    monkeypatch: pytest.MonkeyPatch, take: int
) -> None:
    """Revoked with an event left, the message would leave it to the sweeper's lease."""
    world = World.create(get_sessionmaker())
    single, own, batch, message = _batch_behind_a_single(world)
    asked = _revokes(monkeypatch)
    monkeypatch.setattr(get_settings(), "take_waiting", take)  # the batch's first, or both
    outcome = reverse_event.apply(args=(str(single), own), task_id=own, throw=True).get()
    assert outcome == {"REVERSED": 1 + take}
    if take == 1:
        assert world.get(batch[1]).status == "PENDING"
        assert asked == []
        # The batch's message, delivered, does what is left.
        done = reverse_events.apply(args=(message, [str(e) for e in batch]), task_id=message)
        assert done.get() == {"IGNORED": 1, "REVERSED": 1}
    else:
        assert asked == [[message]]  # once, though two of its events were taken
    assert [world.get(e).status for e in batch] == ["REVERSED"] * 2
    world.check(world.get(single).customer_id)


def test_a_small_batch_takes_waiting_reversals_along_and_revokes_their_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a single reversal's delivery does: a backlog of small batches clears as fast."""
    world = World.create(get_sessionmaker())
    events, messages = _backlog(world, 4)
    message = str(uuid.uuid4())
    customer = world.get(events[0]).customer_id
    batch = [world.event(customer, accumulate=[40], redeem=[30])]
    with unit_of_work(world.factory) as session:
        request_reversal(session, world.brand_id, batch[0], "refund", batch_message_id=message)
    asked = _revokes(monkeypatch)
    monkeypatch.setattr(get_settings(), "take_waiting", 2)  # room for 2 besides its own
    done = reverse_events.apply(args=(message, [str(batch[0])]), task_id=message).get()
    assert done == {"REVERSED": 3}
    assert asked == [[messages[e] for e in events[:2]]]  # the oldest first
    assert [world.get(e).status for e in events] == ["REVERSED"] * 2 + ["PENDING"] * 2
    # The rest, by a message of its own: no committed row is left in flight.
    world.deliver(events[2])  # takes events[3] along
    assert [world.get(e).status for e in events] == ["REVERSED"] * 4
    world.check(customer)
