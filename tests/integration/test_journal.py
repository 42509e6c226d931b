"""Transactions wait on the session until its next flush (worker.ledger.journal): they
must reach PostgreSQL with the transaction that wrote them, and never after a rollback."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from tests.support import World
from worker.ledger.wallet import load_context
from worker.models import Event, Line, Transaction, TransactionType


def _count(world: World, event_id: uuid.UUID) -> int:
    with world.factory() as session:
        query = select(func.count()).select_from(Transaction)
        return session.execute(query.where(Transaction.event_id == event_id)).scalar_one()


def test_a_written_transaction_is_inserted_before_the_next_query_sees_the_table(
    world: World,
) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100])
    with world.factory() as session, session.begin():
        event = session.get_one(Event, earned)
        ctx = load_context(session, event)
        line = session.scalars(select(Line).where(Line.event_id == earned)).one()
        tx_id = ctx.write(line, TransactionType.EXPIRATION, -10, details="test")
        line.remaining -= 10
        line.expired += 10
        # An ORM query autoflushes: the row is there, under the id write() returned.
        found = session.get_one(Transaction, tx_id)
        assert (found.amount, found.line_id, found.details) == (-10, line.id, "test")
    assert _count(world, earned) == 2
    world.check(customer)


def test_transactions_rolled_back_before_a_flush_are_never_inserted(world: World) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100])
    session = world.factory()
    # A savepoint rolled back with a row waiting: the outer transaction's own flush
    # and commit must not insert it.
    with session.begin():
        event = session.get_one(Event, earned)
        ctx = load_context(session, event)
        line = session.scalars(select(Line).where(Line.event_id == earned)).one()
        savepoint = session.begin_nested()
        ctx.write(line, TransactionType.EXPIRATION, -10)
        savepoint.rollback()
        session.get_one(Event, earned).updated_at = ctx.now
        session.flush()
    assert _count(world, earned) == 1
    # A whole transaction rolled back with a row waiting: the session's next
    # transaction must not insert it either.
    with pytest.raises(RuntimeError), session.begin():
        event = session.get_one(Event, earned)
        ctx = load_context(session, event)
        line = session.scalars(select(Line).where(Line.event_id == earned)).one()
        ctx.write(line, TransactionType.EXPIRATION, -10)
        raise RuntimeError("refused")
    with session.begin():
        session.get_one(Event, earned).updated_at = ctx.now
    session.close()
    assert _count(world, earned) == 1
    world.check(customer)
