"""A reversal's delivery takes its brand's other waiting reversals along (TAKE_WAITING):
all done in one transaction, their own messages then change nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, text

from tests.integration.test_round_trips import BATCH_WORK, statements
from tests.support import World
from worker.db import unit_of_work
from worker.processing import (
    _CLAIM,
    _TAKE_WAITING,
    claim,
    deliver,
    handle_message,
    take_waiting,
)


def _waiting(world: World, customers: int, per_customer: int = 1) -> list[uuid.UUID]:
    """Reversals requested, not delivered: one purchase after another, per customer."""
    events = []
    for _ in range(customers):
        customer = uuid.uuid4()
        world.event(customer, accumulate=[300, 200])
        for _ in range(per_customer):
            events.append(world.event(customer, accumulate=[40, 10], redeem=[120], gift_cards=1))
    for event_id in events:
        assert world.request_reversal(event_id) == 202
    return events


def _customers(world: World, events: list[uuid.UUID]) -> set[uuid.UUID]:
    return {world.get(e).customer_id for e in events}


def test_a_delivery_takes_its_brands_waiting_reversals_in_one_transaction(
    world: World, engine: Any, db_factory: Any
) -> None:
    events = _waiting(world, customers=3, per_customer=2)
    other = World.create(db_factory)
    foreign = _waiting(other, customers=1)[0]
    messages = {e: world.message_id(e) for e in events}

    with statements(engine) as seen:
        delivery = deliver(events[0], messages[events[0]], world.factory)
    # The claim, the reversals taken along; then the work, as a bulk batch's.
    verbs = [" ".join(s.split()[:2]) for s in seen]
    assert verbs == ["UPDATE events", "WITH oldest", *BATCH_WORK], seen
    assert delivery.outcomes == dict.fromkeys(events, "REVERSED")
    # The messages the task has the workers drop (worker.tasks.revoke_taken): the
    # taken reversals' own, in the order they were requested; not the delivery's own.
    assert delivery.taken == tuple(messages[e] for e in events[1:])
    for event_id in events:
        event = world.get(event_id)
        assert (event.status, event.reversal_status) == ("REVERSED", "REVERSED")
        assert event.reversal_attempts == 1
        assert event.queue_message_id == messages[event_id]  # its own, still to come
    # Their own messages find them done and change nothing.
    for event_id in events[1:]:
        assert handle_message(event_id, messages[event_id], world.factory) == "IGNORED"
        assert world.get(event_id).reversal_attempts == 1
    # Another brand's waiting reversal is its own deliveries' work.
    assert world.get(foreign).status == "PENDING"
    for customer in _customers(world, events):
        world.check(customer)
    assert other.deliver(foreign) == "REVERSED"
    other.check()


def test_a_refusal_among_reversals_taken_along_stays_its_own(world: World) -> None:
    events = _waiting(world, customers=2)
    # A customer who spent what a purchase earned: under `fail`, refused.
    spender = uuid.uuid4()
    earned = world.event(spender, accumulate=[100])
    world.event(spender, redeem=[80])
    assert world.request_reversal(earned, policy="fail") == 202

    assert world.deliver(events[0]) == "REVERSED"
    refused = world.get(earned)
    assert (refused.status, refused.reversal_status) == ("FAILED", "FAILED")
    assert "shortfall" in (refused.reversal_last_error or "")
    assert not refused.reversal_dead_lettered
    assert world.get(events[1]).status == "REVERSED"
    for customer in {*_customers(world, events), spender}:
        world.check(customer)


def test_a_delivery_told_to_take_none_takes_none(world: World) -> None:
    events = _waiting(world, customers=2)
    message = world.message_id(events[0])
    assert handle_message(events[0], message, world.factory, take=0) == "REVERSED"
    assert world.get(events[1]).status == "PENDING"
    assert world.deliver(events[1]) == "REVERSED"
    for customer in _customers(world, events):
        world.check(customer)


def test_reversals_taken_by_a_delivery_that_died_are_done_by_their_own_messages(
    world: World,
) -> None:
    events = _waiting(world, customers=3)
    first = world.message_id(events[0])
    # The claim (with the reversals taken) committed, then the worker died.
    with unit_of_work(world.factory) as session:
        claimed = claim(session, [events[0]], first)[events[0]]
        taken = take_waiting(session, events[0], claimed.brand_id, 10)
    assert set(taken) == set(events[1:])
    for event_id in events:
        assert world.get(event_id).status == "PROCESSING"
    # Each message still owns its event: redelivered, it claims it again (a second
    # attempt) and reverses it once.
    for event_id in events:
        assert world.deliver(event_id) == "REVERSED"
        assert world.get(event_id).reversal_attempts == 2
    for customer in _customers(world, events):
        world.check(customer)


def test_a_delivery_takes_no_more_than_its_limit_oldest_first(world: World) -> None:
    events = _waiting(world, customers=6)
    first = world.message_id(events[0])
    with unit_of_work(world.factory) as session:
        claimed = claim(session, [events[0]], first)[events[0]]
        taken = take_waiting(session, events[0], claimed.brand_id, 2)
    assert list(taken) == events[1:3]
    assert [world.get(e).status for e in events[3:]] == ["PENDING"] * 3
    for event_id in events:
        assert world.deliver(event_id) in ("REVERSED", "IGNORED")
    for customer in _customers(world, events):
        world.check(customer)


def _plan(world: World, statement: Any, params: dict[str, Any]) -> str:
    """PostgreSQL's plan for the statement, index scans only: between two indexes, it
    shows which one the planner trusts."""
    plan: list[str] = []

    def explain(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_: Any) -> Any:
        return ("EXPLAIN " if sql.startswith(("UPDATE", "WITH")) else "") + sql, parameters

    with unit_of_work(world.factory) as session:
        connection = session.connection()
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        event.listen(connection, "before_cursor_execute", explain, retval=True)
        try:
            plan = [row[0] for row in connection.execute(statement, params)]
        finally:
            event.remove(connection, "before_cursor_execute", explain)
    return "\n".join(plan)


def _backlog_after_statistics(world: World) -> list[uuid.UUID]:
    """Statistics taken while none of the brand's events was in flight, then a backlog."""
    events = [world.event(uuid.uuid4(), accumulate=[10]) for _ in range(3)]
    with unit_of_work(world.factory) as session:
        session.execute(text("ANALYZE events"))
    for event_id in events:
        assert world.request_reversal(event_id) == 202
    return events


def test_a_claim_finds_its_events_by_primary_key_whatever_the_statistics(
    world: World,
) -> None:
    """Not a scan of every event in flight (ix_events_in_flight) for each claim."""
    events = _backlog_after_statistics(world)
    params = {
        "claim_ids": events,
        "claim_message_id": world.message_id(events[0]),
        "claim_now": datetime.now(UTC),
    }
    plan = _plan(world, _CLAIM, params)
    assert "events_pkey" in plan and "ix_events_in_flight" not in plan, plan


def test_a_take_updates_what_it_locked_by_primary_key(world: World) -> None:
    """The oldest waiting are found in ix_events_in_flight, once; then updated by id."""
    events = _backlog_after_statistics(world)
    params = {
        "take_except": events[0],
        "take_brand": world.brand_id,
        "take_limit": 49,
        "take_now": datetime.now(UTC),
    }
    plan = _plan(world, _TAKE_WAITING, params)
    assert plan.count("ix_events_in_flight") == 1, plan
    assert "events_pkey" in plan and "Index Cond: (id = oldest.id)" in plan, plan
