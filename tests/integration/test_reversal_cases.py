"""Every kind of reversal (SPEC §5, §6), each followed by the SPEC §3 invariants."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from tests.support import World
from worker.db import unit_of_work
from worker.intake import IntakeError, fulfil_event
from worker.maintenance import expire_lines, expire_reservations
from worker.models import Brand, Customer, Event, GiftCard, Line, TierChange, Transaction


def _txs(world: World, event_id: uuid.UUID) -> list[tuple[str, int]]:
    with world.factory() as session:
        rows = session.scalars(
            select(Transaction).where(Transaction.event_id == event_id).order_by(Transaction.seq)
        )
        return [(t.type, t.amount) for t in rows]


def _spent_event(world: World, customer: uuid.UUID) -> uuid.UUID:
    earned = world.event(customer, accumulate=[100])
    world.event(customer, redeem=[70])
    return earned


def test_clamp_takes_back_only_what_is_left_and_reports_the_rest(world: World) -> None:
    customer = uuid.uuid4()
    earned = _spent_event(world, customer)
    assert world.reverse(earned, "clamp") == "REVERSED"
    assert world.balance(customer) == 0
    shortfall = world.get(earned).reversal_shortfall
    assert shortfall is not None
    assert (shortfall["policy"], shortfall["total"]) == ("clamp", 70)
    assert [a for k, a in _txs(world, earned) if k == "REVERSAL"] == [-30]
    world.check(customer)


def test_fail_refuses_a_shortfall_and_changes_nothing(world: World) -> None:
    customer = uuid.uuid4()
    earned = _spent_event(world, customer)
    assert world.reverse(earned, "fail") == "FAILED"
    event = world.get(earned)
    assert event.status == "FAILED" and event.reversal_status == "FAILED"
    assert event.reversal_last_error is not None and "shortfall of 70" in event.reversal_last_error
    assert _txs(world, earned) == [("ACCUMULATION", 100)]
    assert world.balance(customer) == 30
    world.check(customer)
    # A FAILED reversal may be requested again, here under a policy that allows it.
    assert world.reverse(earned, "negative") == "REVERSED"
    assert world.balance(customer) == -70
    world.check(customer)


def test_the_brand_policy_applies_when_the_request_names_none(world: World) -> None:
    customer = uuid.uuid4()
    with unit_of_work(world.factory) as session:
        session.get_one(Brand, world.brand_id).settings = {"shortfall": "fail"}
    earned = _spent_event(world, customer)
    assert world.reverse(earned) == "FAILED"
    assert world.reverse(earned, "clamp") == "REVERSED"
    world.check(customer)


def test_points_that_already_expired_are_not_taken_back_again(world: World) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[(100, datetime.now(UTC) + timedelta(days=1))])
    world.event(customer, redeem=[40])
    with unit_of_work(world.factory) as session:
        session.execute(
            update(Line)
            .where(Line.customer_id == customer)
            .values(expiration_date=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert expire_lines(factory=world.factory) == 60
    assert world.balance(customer) == 0
    assert world.reverse(earned) == "REVERSED"
    # 60 expired: only the 40 spent are owed back, as a debt.
    assert [a for k, a in _txs(world, earned) if k == "REVERSAL"] == [-40]
    assert world.balance(customer) == -40
    world.check(customer)


def test_a_redemption_goes_back_to_each_line_with_its_own_date(world: World) -> None:
    customer = uuid.uuid4()
    d1, d2 = datetime(2030, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)
    world.event(customer, accumulate=[(30, d1), (50, d2)])
    spend = world.event(customer, redeem=[60])
    with world.factory() as session:
        left = sorted(
            (ln.expiration_date, ln.remaining)
            for ln in session.scalars(select(Line).where(Line.customer_id == customer))
        )
    assert left == [(d1, 0), (d2, 20)]
    assert world.reverse(spend) == "REVERSED"
    with world.factory() as session:
        back = sorted(
            (ln.expiration_date, ln.remaining, ln.amount)
            for ln in session.scalars(select(Line).where(Line.customer_id == customer))
        )
    assert back == [(d1, 30, 30), (d2, 50, 50)]
    world.check(customer)


def test_gift_cards_are_voided_and_a_redeemed_one_is_a_shortfall(world: World) -> None:
    customer = uuid.uuid4()
    one = world.event(customer, accumulate=[10], gift_cards=2)
    assert world.reverse(one) == "REVERSED"
    with world.factory() as session:
        cards = session.scalars(select(GiftCard).where(GiftCard.event_id == one)).all()
    assert len(cards) == 2 and all(card.voided_at is not None for card in cards)

    two = world.event(customer, accumulate=[10], gift_cards=1)
    with unit_of_work(world.factory) as session:
        session.execute(
            update(GiftCard).where(GiftCard.event_id == two).values(redeemed_at=datetime.now(UTC))
        )
    assert world.reverse(two, "fail") == "FAILED"
    assert world.reverse(two, "negative") == "REVERSED"
    shortfall = world.get(two).reversal_shortfall
    assert shortfall is not None and shortfall["gift_cards"][0]["reason"] == "already redeemed"
    with world.factory() as session:
        card = session.scalars(select(GiftCard).where(GiftCard.event_id == two)).one()
    assert card.voided_at is None
    world.check(customer)


def test_tiers_follow_the_points_both_ways(world: World) -> None:
    with unit_of_work(world.factory) as session:
        session.get_one(Brand, world.brand_id).settings = {
            "tiers": [{"name": "SILVER", "min_points": 0}, {"name": "GOLD", "min_points": 1000}]
        }
    customer = uuid.uuid4()
    world.event(customer, accumulate=[100])
    big = world.event(customer, accumulate=[1000])
    assert world.reverse(big) == "REVERSED"
    with world.factory() as session:
        assert session.get_one(Customer, customer).tier == "SILVER"
        changes = session.scalars(
            select(TierChange).where(TierChange.customer_id == customer).order_by(TierChange.at)
        ).all()
    assert [(c.from_tier, c.to_tier) for c in changes] == [
        (None, "SILVER"),
        ("SILVER", "GOLD"),
        ("GOLD", "SILVER"),
    ]
    assert [c.event_id for c in changes][1:] == [big, big]
    world.check(customer)


def test_a_reservation_holds_points_until_fulfilled(world: World) -> None:
    customer = uuid.uuid4()
    world.event(customer, accumulate=[100])
    reserved = world.event(customer, accumulate=[50], redeem=[80], fulfilled=False)
    assert world.get(reserved).status == "RESOLVED"
    assert world.balance(customer) == 100  # nothing applied yet
    # The held 80 cannot be spent by anyone else.
    refused = world.event(customer, redeem=[30])
    assert world.get(refused).status == "FAILED"
    with unit_of_work(world.factory) as session:
        fulfil_event(session, world.brand_id, reserved)
    assert world.balance(customer) == 100 + 50 - 80
    assert world.reverse(reserved) == "REVERSED"
    assert world.balance(customer) == 100
    world.check(customer)


def test_reversing_a_reservation_cancels_it_and_releases_the_holds(world: World) -> None:
    customer = uuid.uuid4()
    world.event(customer, accumulate=[100])
    reserved = world.event(customer, accumulate=[50], redeem=[80], fulfilled=False)
    assert world.reverse(reserved) == "CANCELLED"
    event = world.get(reserved)
    assert event.cancelled_at is not None and _txs(world, reserved) == []
    spend = world.event(customer, redeem=[100])  # the hold is gone
    assert world.get(spend).status == "RESOLVED"
    with pytest.raises(IntakeError) as refused:
        world.request_reversal(reserved)
    assert refused.value.status == 409
    world.check(customer)


def test_a_lapsed_reservation_expires(world: World) -> None:
    customer = uuid.uuid4()
    world.event(customer, accumulate=[100])
    reserved = world.submit(customer, accumulate=[50], redeem=[80], fulfilled=False)
    with unit_of_work(world.factory) as session:
        session.get_one(Event, reserved).reserve = 1
    world.deliver(reserved)
    with unit_of_work(world.factory) as session:
        event = session.get_one(Event, reserved)
        assert event.reservation_expires_at is not None
        event.reservation_expires_at = datetime.now(UTC) - timedelta(seconds=1)
    assert expire_reservations(factory=world.factory) == 1
    event = world.get(reserved)
    assert event.status == "EXPIRED" and event.expired_at is not None
    assert world.balance(customer) == 100
    assert world.get(world.event(customer, redeem=[100])).status == "RESOLVED"
    with pytest.raises(IntakeError) as refused:
        world.request_reversal(reserved)
    assert refused.value.status == 409
    world.check(customer)


def test_line_expiry_runs_in_batches_and_keeps_the_invariants(world: World) -> None:
    customers = [uuid.uuid4() for _ in range(5)]
    past = datetime.now(UTC) + timedelta(days=1)
    for customer in customers:
        world.event(customer, accumulate=[(10, past), (5, None)])
    with unit_of_work(world.factory) as session:
        session.execute(
            update(Line)
            .where(Line.customer_id.in_(customers), Line.expiration_date.is_not(None))
            .values(expiration_date=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert expire_lines(batch=2, factory=world.factory) == 20
    assert expire_lines(batch=2, factory=world.factory) == 20
    assert expire_lines(batch=2, factory=world.factory) == 10
    assert expire_lines(batch=2, factory=world.factory) == 0
    for customer in customers:
        assert world.balance(customer) == 5
        world.check(customer)


def test_never_processed_and_reversed_events_get_the_spec_answers(world: World) -> None:
    customer = uuid.uuid4()
    pending = world.submit(customer, accumulate=[10])
    with pytest.raises(IntakeError) as refused:
        world.request_reversal(pending)
    assert refused.value.status == 409
    world.deliver(pending)
    assert world.reverse(pending) == "REVERSED"
    message = world.message_id(pending)
    assert world.request_reversal(pending) == 200
    assert world.message_id(pending) == message  # nothing enqueued
    world.check(customer)
