"""Ledger scenarios through the worker's handler, checked against SPEC §3 after each."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.support import World
from worker.db import unit_of_work
from worker.intake import request_reversal
from worker.models import Allocation, Line, Redemption, Transaction
from worker.processing import handle_batch

LATER = datetime(2031, 1, 1, tzinfo=UTC)
SOONER = datetime(2030, 1, 1, tzinfo=UTC)


def _txs(world: World, event_id: uuid.UUID) -> list[tuple[str, int]]:
    with world.factory() as session:
        rows = session.scalars(
            select(Transaction).where(Transaction.event_id == event_id).order_by(Transaction.seq)
        )
        return [(t.type, t.amount) for t in rows]


def test_purchase_accumulates_redeems_and_reversal_restores_wallet(world: World) -> None:
    customer = uuid.uuid4()
    world.event(customer, accumulate=[(50, LATER), (40, SOONER)])
    assert world.balance(customer) == 90
    purchase = world.event(customer, accumulate=[(30, None), (20, None)], redeem=[60])
    assert world.get(purchase).status == "RESOLVED"
    assert world.balance(customer) == 90 + 50 - 60
    world.check(customer)

    # Soonest expiry first: 40 from the 2030 line, then 20 from the 2031 line.
    with world.factory() as session:
        given = sorted(
            (line.expiration_date, a.amount)
            for a, line in session.execute(
                select(Allocation, Line)
                .join(Line, Line.id == Allocation.line_id)
                .join(Redemption, Redemption.id == Allocation.redemption_id)
                .where(Redemption.event_id == purchase)
            )
        )
    assert given == [(SOONER, 40), (LATER, 20)]

    assert world.reverse(purchase) == "REVERSED"
    event = world.get(purchase)
    assert event.reversed_at is not None and event.reversal_status == "REVERSED"
    assert world.balance(customer) == 90
    reversals = [amount for kind, amount in _txs(world, purchase) if kind == "REVERSAL"]
    assert sorted(reversals) == [-30, -20, 20, 40]
    with world.factory() as session:
        lines = session.scalars(
            select(Line).where(Line.customer_id == customer, Line.event_id != purchase)
        ).all()
        assert sorted((ln.amount, ln.remaining) for ln in lines) == [(40, 40), (50, 50)]
    world.check(customer)


def test_redeeming_more_than_the_balance_fails_and_changes_nothing(world: World) -> None:
    customer = uuid.uuid4()
    world.event(customer, accumulate=[10])
    refused = world.event(customer, accumulate=[5], redeem=[100])
    event = world.get(refused)
    assert event.status == "FAILED"
    assert event.error is not None and "not enough balance" in event.error
    assert _txs(world, refused) == []
    assert world.balance(customer) == 10
    world.check(customer)


def test_negative_shortfall_leaves_a_debt_that_the_next_accumulation_pays(world: World) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100])
    world.event(customer, redeem=[70])
    assert world.reverse(earned) == "REVERSED"
    assert world.balance(customer) == -70
    shortfall = world.get(earned).reversal_shortfall
    assert shortfall is not None and shortfall["total"] == 70 and shortfall["policy"] == "negative"
    world.check(customer)

    world.event(customer, accumulate=[100])
    assert world.balance(customer) == 30
    with world.factory() as session:
        debts = session.scalars(
            select(Line).where(Line.customer_id == customer, Line.remaining < 0)
        ).all()
    assert debts == []
    world.check(customer)


def test_reversing_everything_in_any_order_returns_to_zero(world: World) -> None:
    customer = uuid.uuid4()
    first = world.event(customer, accumulate=[100])
    spend = world.event(customer, redeem=[70])
    second = world.event(customer, accumulate=[100])
    for event_id in (first, second, spend):
        assert world.reverse(event_id) == "REVERSED"
        world.check(customer)
    assert world.balance(customer) == 0
    with world.factory() as session:
        lines = session.scalars(select(Line).where(Line.customer_id == customer)).all()
    assert all(line.remaining == 0 for line in lines)


def test_a_second_delivery_of_the_same_message_changes_nothing(world: World) -> None:
    customer = uuid.uuid4()
    world.event(customer, accumulate=[100])
    purchase = world.event(customer, accumulate=[10], redeem=[50])
    world.request_reversal(purchase)
    message = world.message_id(purchase)
    from worker.processing import handle_message

    assert handle_message(purchase, message, world.factory) == "REVERSED"
    before = _txs(world, purchase)
    assert handle_message(purchase, message, world.factory) == "IGNORED"
    assert handle_message(purchase, str(uuid.uuid4()), world.factory) == "IGNORED"
    assert _txs(world, purchase) == before
    assert world.balance(customer) == 100
    world.check(customer)


def test_reversal_requests_get_the_spec_answers(world: World) -> None:
    from worker.intake import IntakeError

    customer = uuid.uuid4()
    pending = world.submit(customer, accumulate=[10])
    try:
        world.request_reversal(pending)
        raise AssertionError("a PENDING event must not be reversible")
    except IntakeError as exc:
        assert exc.status == 409
    world.deliver(pending)
    assert world.request_reversal(pending) == 202
    assert world.request_reversal(pending) == 202  # in flight: same answer, nothing new
    world.deliver(pending)
    assert world.request_reversal(pending) == 200  # already REVERSED
    failed = world.event(customer, redeem=[1000])
    try:
        world.request_reversal(failed)
        raise AssertionError("an event whose first processing failed must not be reversible")
    except IntakeError as exc:
        assert exc.status == 409
    world.check(customer)


def test_expired_points_returned_by_a_reversal_expire_again(world: World) -> None:
    customer = uuid.uuid4()
    soon = datetime.now(UTC) + timedelta(seconds=2)
    world.event(customer, accumulate=[(50, soon)])
    spend = world.event(customer, redeem=[30])
    with world.factory() as session, session.begin():
        line = session.scalars(select(Line).where(Line.customer_id == customer)).one()
        line.expiration_date = datetime.now(UTC) - timedelta(seconds=1)
    assert world.reverse(spend) == "REVERSED"
    kinds = [kind for kind, _ in _txs(world, spend)]
    assert kinds == ["REDEMPTION", "REVERSAL", "EXPIRATION"]
    # The line is past its date: the 30 returned expire at once, and with them the
    # 20 a line-expiry sweep had not reached yet. Nothing outlives its line.
    assert [a for k, a in _txs(world, spend) if k == "EXPIRATION"] == [-50]
    assert world.balance(customer) == 0
    world.check(customer)


def _remaining_by_event(world: World, customer: uuid.UUID) -> dict[uuid.UUID, int]:
    with world.factory() as session:
        lines = session.scalars(select(Line).where(Line.customer_id == customer))
        return {line.event_id: line.remaining for line in lines}


def test_points_a_reversal_gives_back_pay_a_debt_on_a_line_it_did_not_touch(
    world: World,
) -> None:
    customer = uuid.uuid4()
    first = world.event(customer, accumulate=[100])
    spend = world.event(customer, redeem=[60])  # from the first line: 40 left
    second = world.event(customer, accumulate=[100])
    world.event(customer, redeem=[120])  # 40 from the first line, 80 from the second
    assert world.reverse(second) == "REVERSED"  # the second line owes 80
    assert _remaining_by_event(world, customer) == {first: 0, second: -80}
    world.check(customer)

    # The 60 points given back to the first line pay the second line's debt at once.
    assert world.reverse(spend) == "REVERSED"
    assert _remaining_by_event(world, customer) == {first: 0, second: -20}
    assert world.balance(customer) == -20
    world.check(customer)


@pytest.mark.parametrize("delivery", ["alone", "in a bulk batch"])
def test_the_debt_a_reversal_leaves_is_paid_at_once_from_live_points(
    world: World, delivery: str
) -> None:
    customer = uuid.uuid4()
    first = world.event(customer, accumulate=[100])
    world.event(customer, redeem=[70])  # from the first line: 30 left
    second = world.event(customer, accumulate=[50])
    other = uuid.uuid4()
    elsewhere = world.event(other, accumulate=[10])
    if delivery == "alone":
        assert world.reverse(first, "negative") == "REVERSED"
    else:
        batch = str(uuid.uuid4())
        with unit_of_work(world.factory) as session:
            for event_id in (first, elsewhere):
                request_reversal(
                    session, world.brand_id, event_id, "refund", batch_message_id=batch
                )
        assert handle_batch([first, elsewhere], batch, world.factory) == {"REVERSED": 2}
    # The first line owes 70; the second line's 50 pay what they can at once.
    assert _remaining_by_event(world, customer) == {first: -20, second: 0}
    assert world.balance(customer) == -20
    world.check(customer)
    world.check(other)
