"""Two workers at the same moment, on real, separate database sessions (committed data)."""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from tests.support import World
from worker.db import get_sessionmaker, unit_of_work
from worker.models import Transaction
from worker.processing import handle_message


def _together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released at the same instant; re-raise any error."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # surfaced below, in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    return results


def _reversals(event_id: uuid.UUID) -> int:
    with unit_of_work() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Transaction)
                .where(Transaction.event_id == event_id, Transaction.type == "REVERSAL")
            )
            or 0
        )


def test_two_workers_reversing_one_event_at_once_reverse_it_once() -> None:
    world = World.create(get_sessionmaker())
    customer = uuid.uuid4()
    world.event(customer, accumulate=[500])
    purchase = world.event(customer, accumulate=[50, 25], redeem=[300])
    world.request_reversal(purchase)
    message = world.message_id(purchase)
    outcomes = _together([lambda: handle_message(purchase, message)] * 2)
    assert sorted(outcomes) == ["IGNORED", "REVERSED"]
    assert world.get(purchase).status == "REVERSED"
    assert _reversals(purchase) == 3
    assert world.balance(customer) == 500
    world.check(customer)


def test_concurrent_reversals_of_one_customer_do_not_deadlock() -> None:
    world = World.create(get_sessionmaker())
    customer = uuid.uuid4()
    world.event(customer, accumulate=[1000, 1000])
    events = [world.event(customer, accumulate=[10, 20], redeem=[100]) for _ in range(8)]
    for event_id in events:
        world.request_reversal(event_id)
    messages = [world.message_id(e) for e in events]
    outcomes = _together(
        [functools.partial(handle_message, e, m) for e, m in zip(events, messages, strict=True)]
    )
    # A delivery may take others along (TAKE_WAITING): theirs then change nothing.
    assert "REVERSED" in outcomes and set(outcomes) <= {"REVERSED", "IGNORED"}, outcomes
    assert all(world.get(e).status == "REVERSED" for e in events)
    assert world.balance(customer) == 2000
    assert all(_reversals(e) == 3 for e in events)
    world.check(customer)


def test_a_ledger_operation_does_not_hold_up_an_event_recorded_for_its_customer() -> None:
    """The operation locks the customer's row FOR NO KEY UPDATE, not FOR UPDATE: the
    key-share lock that inserting an event for that customer takes must not wait."""
    from sqlalchemy import text

    from worker.intake import create_event
    from worker.ledger.wallet import load_context
    from worker.models import Event

    world = World.create(get_sessionmaker())
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100])
    with unit_of_work() as holding:
        ctx = load_context(holding, holding.get_one(Event, earned))
        assert ctx.customer.id == customer
        # Meanwhile, at intake, in another transaction: a new event for that customer.
        with unit_of_work() as intake:
            intake.execute(text("SET LOCAL lock_timeout = '2s'"))
            event, created = create_event(
                intake,
                world.brand_id,
                {"customer_id": customer, "accumulate": [], "redeem": [], "gift_cards": []},
            )
            assert created
    assert world.get(event.id).customer_id == customer
    world.check(customer)
