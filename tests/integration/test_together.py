"""Rows written together (worker.ledger.together): the lines, wallets and gift cards a
flush updates, and the journal's transactions, go as one statement per table, and
must land exactly as the ORM's own flush would have written them, or be refused
as it would have refused them."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import JSON, delete, event, func, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from tests.support import World
from worker.ledger import together
from worker.ledger.wallet import load_context, utcnow
from worker.models import Event, GiftCard, Line, Transaction, TransactionType, Wallet


def _lines(session: Session, event_id: uuid.UUID) -> list[Line]:
    query = select(Line).where(Line.event_id == event_id).order_by(Line.amount.desc())
    return list(session.scalars(query))


def _updates(session: Session) -> list[str]:
    """The UPDATE statements the session's connection sends from now on, by their
    first words: `UPDATE lines AS` is worker.ledger.together's, `UPDATE lines SET`
    the ORM's."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        if args[2].startswith("UPDATE"):
            seen.append(" ".join(args[2].split()[:3]))

    event.listen(session.connection(), "before_cursor_execute", record)
    return seen


def test_changed_rows_of_a_table_are_one_statement_and_read_back_as_written(
    world: World,
) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100, 50, 30], gift_cards=2)
    voided = utcnow()
    with world.factory() as session, session.begin():
        ctx = load_context(session, session.get_one(Event, earned))
        lines = _lines(session, earned)
        cards = list(session.scalars(select(GiftCard).where(GiftCard.event_id == earned)))
        updates = _updates(session)
        # Points expire as worker.ledger.wallet.expire_now takes them: a transaction
        # (the wallet's balance moves) and the line's columns.
        for line, gone in zip(lines, (10, 20, 30), strict=True):
            ctx.write(line, TransactionType.EXPIRATION, -gone)
            line.remaining -= gone
            line.expired += gone
        lines[2].state = "EXPIRED"  # one line with another set of columns
        for card in cards:
            card.voided_at = voided
        session.flush()
        # One statement per table and set of columns, and nothing left for the ORM.
        assert updates == [
            "UPDATE gift_cards AS",
            "UPDATE lines AS",
            "UPDATE lines AS",
            "UPDATE wallets AS",
        ]
        session.flush()
        assert len(updates) == 4
    with world.factory() as session:
        assert [(ln.remaining, ln.expired, ln.state) for ln in _lines(session, earned)] == [
            (90, 10, "ACTIVE"),
            (30, 20, "ACTIVE"),
            (0, 30, "EXPIRED"),
        ]
        cards = list(session.scalars(select(GiftCard).where(GiftCard.event_id == earned)))
        assert [card.voided_at for card in cards] == [voided, voided]
    assert world.balance(customer) == 180 - 60
    world.check(customer)


def test_a_string_too_long_for_its_column_is_refused_not_cut(world: World) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100])
    session = world.factory()
    with pytest.raises(DataError, match="too long"), session.begin():
        line = _lines(session, earned)[0]
        line.state = "EXPIRED" * 3  # 21 characters; the column holds 16
        session.flush()
    session.close()
    with world.factory() as session:
        assert _lines(session, earned)[0].state == "ACTIVE"
    world.check(customer)


def test_transactions_are_inserted_as_given_or_none_is(world: World) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100])
    table: Any = Transaction.__table__
    names = [c.name for c in table.columns if c.name not in ("seq", "metadata")]
    with world.factory() as session:
        accumulation = session.scalars(
            select(Transaction).where(Transaction.event_id == earned)
        ).one()
        template = {name: getattr(accumulation, name) for name in names}
    # Each column as one array: a None among values, and a column of None only.
    rows = [
        {**template, "id": uuid.uuid4(), "type": "EXPIRATION", "amount": -10, "details": None,
         "reverses_id": None, "cost": Decimal("10.00006")},
        {**template, "id": uuid.uuid4(), "type": "EXPIRATION", "amount": -5, "details": "x",
         "reverses_id": None},
    ]  # fmt: skip
    with world.factory() as session, session.begin():
        together.insert(session.connection(), table, rows)
    with world.factory() as session:
        found = session.scalars(
            select(Transaction).where(Transaction.id.in_([row["id"] for row in rows]))
        ).all()
        by_id = {tx.id: tx for tx in found}
        for row in rows:
            stored = {name: getattr(by_id[row["id"]], name) for name in names}
            # The column's scale applies (numeric(18, 4)), as to the ORM's INSERT.
            assert stored == {**row, "cost": row["cost"].quantize(Decimal("0.0001"))}
    # A value too long for its column (type holds 16 characters): none is inserted.
    refused = [{**row, "id": uuid.uuid4()} for row in rows]
    refused[1]["type"] = "EXPIRATION" * 2
    session = world.factory()
    with pytest.raises(DataError, match="too long"), session.begin():
        together.insert(session.connection(), table, refused)
    session.close()
    with world.factory() as session:
        count = session.scalars(
            select(Transaction.id).where(Transaction.id.in_([row["id"] for row in refused]))
        ).all()
        assert count == []


def test_a_row_gone_from_under_its_object_is_a_stale_data_error(world: World) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100], gift_cards=2)
    session = world.factory()
    with pytest.raises(StaleDataError, match="expected to update 2 row"), session.begin():
        cards = list(session.scalars(select(GiftCard).where(GiftCard.event_id == earned)))
        # Behind the session's back: its object stays, with no row.
        gone = delete(GiftCard).where(GiftCard.id == cards[0].id)
        session.execute(gone.execution_options(synchronize_session=False))
        for card in cards:
            card.voided_at = utcnow()
        session.flush()
    session.close()
    with world.factory() as session:
        cards = list(session.scalars(select(GiftCard).where(GiftCard.event_id == earned)))
        assert len(cards) == 2
        assert all(card.voided_at is None for card in cards)


def test_what_cannot_go_together_is_left_to_the_orm(world: World) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100, 50])
    with world.factory() as session, session.begin():
        first, second = _lines(session, earned)
        updates = _updates(session)
        # A SQL expression as a value: the ORM's to send, and to read back.
        first.remaining = Line.remaining - 5
        first.expired = first.expired + 5
        second.remaining -= 7
        second.expired += 7
        session.flush()
        assert updates == ["UPDATE lines AS", "UPDATE lines SET"]
        assert (first.remaining, second.remaining) == (
            first.amount - 5,
            second.amount - 7,
        )
    with world.factory() as session:
        assert sorted(ln.amount - ln.remaining for ln in _lines(session, earned)) == [5, 7]


def _stored_json(session: Session, event_id: uuid.UUID) -> tuple[Any, ...]:
    """The JSON columns as PostgreSQL holds them: SQL NULL and JSON's null told apart."""
    return session.execute(
        select(
            Event.reversal_shortfall.is_(None),
            func.jsonb_typeof(Event.reversal_shortfall),
            Event.reversal_shortfall,
            Event.result_wallet.is_(None),
            func.jsonb_typeof(Event.result_wallet),
            Event.result_wallet,
            Event.status,
        ).where(Event.id == event_id)
    ).one()


def test_events_json_is_written_as_the_orm_writes_it(world: World) -> None:
    customer = uuid.uuid4()
    together_ids = [world.event(customer, accumulate=[10]) for _ in range(3)]
    orm_ids = [world.event(customer, accumulate=[10]) for _ in range(3)]
    shortfall = {"policy": "clamp", "note": 'é "quoted" \u2028 \\ line', "lines": [{"n": 3}]}
    # (reversal_shortfall, whose None is SQL NULL; result_wallet, whose None is JSON null)
    changes = [(shortfall, None), (None, {"x": [1, 2.5, True]}), (None, None)]
    with world.factory() as session, session.begin():
        # Read first: a read flushes what is pending.
        events = {
            e.id: e for e in session.scalars(select(Event).where(Event.customer_id == customer))
        }
        updates = _updates(session)
        for ids, by_orm in ((together_ids, False), (orm_ids, True)):
            for event_id, (given, wallet) in zip(ids, changes, strict=True):
                event_ = events[event_id]
                event_.reversal_shortfall = given
                event_.result_wallet = wallet
                event_.status = "REVERSED"
                if by_orm:
                    # A SQL expression as a value: the whole object is the ORM's.
                    event_.attempts = Event.attempts + 0
        session.flush()
        # One statement for the three, whatever their values; the ORM's one per event.
        assert updates == ["UPDATE events AS", *["UPDATE events SET"] * 3]
    with world.factory() as session:
        for ours, orms in zip(together_ids, orm_ids, strict=True):
            assert _stored_json(session, ours) == _stored_json(session, orms)
        stored = [_stored_json(session, event_id) for event_id in together_ids]
    assert stored[0][:3] == (False, "object", shortfall)
    assert stored[0][3:5] == (False, "null")  # None where none_as_null is off: JSON's null
    assert stored[1][:2] == (True, None)  # None where it is on: SQL NULL
    assert stored[1][5] == {"x": [1, 2.5, True]}
    world.check(customer)


def test_a_json_sentinel_is_left_to_the_orm(world: World) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[10])
    with world.factory() as session, session.begin():
        updates = _updates(session)
        event_ = session.get_one(Event, earned)
        # SQLAlchemy's own way to say JSON's null (a sentinel, not a mapped value type).
        event_.result_wallet = JSON.NULL  # type: ignore[assignment]
        session.flush()
        assert updates == ["UPDATE events SET"]
    with world.factory() as session:
        assert _stored_json(session, earned)[3:5] == (False, "null")


def test_a_savepoint_rolled_back_takes_the_updates_with_it(world: World) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100])
    with world.factory() as session, session.begin():
        line = _lines(session, earned)[0]
        savepoint = session.begin_nested()
        line.remaining -= 40
        line.expired += 40
        session.flush()
        savepoint.rollback()
        # Expired by the rollback, read again: as it was before the savepoint.
        assert (line.remaining, line.expired) == (100, 0)
    world.check(customer)


def test_the_statements_have_one_array_per_column_without_length_or_scale() -> None:
    table: Any = Transaction.__table__
    insert = together.insert_statement(table, ("id", "type", "cost", "created_at"))
    assert insert == (
        "INSERT INTO transactions (id, type, cost, created_at) SELECT * FROM "
        "unnest(%b::UUID[], %b::text[], %b::numeric[], %b::TIMESTAMP WITH TIME ZONE[])"
    )
    wallets: Any = Wallet.__table__
    update = together.update_statement(wallets, ("customer_id", "reward_id"), ("balance",))
    assert update == (
        "UPDATE wallets AS target SET balance = given.balance FROM "
        "unnest(%b::UUID[], %b::UUID[], %b::BIGINT[]) AS given(customer_id, reward_id, balance) "
        "WHERE target.customer_id = given.customer_id AND target.reward_id = given.reward_id"
    )
