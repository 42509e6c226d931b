"""The event view's result parts, built by PostgreSQL (worker.ledger.views), hold the
same JSON as the Python formats the rest of the API uses: iso(), line_view() and
transaction_view() (the customer's transactions route), read from the ORM's objects."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from tests.support import World
from worker.db import unit_of_work
from worker.ledger.views import (
    campaign_names,
    event_documents,
    event_views,
    iso,
    line_view,
    transaction_view,
)
from worker.models import (
    Allocation,
    Campaign,
    Event,
    GiftCard,
    Line,
    Redemption,
    Reward,
    TierChange,
    Transaction,
)

TIERS = [{"name": "Silver", "min_points": 100}, {"name": "Gold", "min_points": 500}]


def _expected(session: Session, event: Event) -> dict[str, Any]:
    """The result's parts, formatted in Python from the ORM's objects."""
    lines = session.scalars(
        select(Line).where(Line.event_id == event.id).order_by(Line.created_at, text("ctid"))
    ).all()
    allocations = session.execute(
        select(Allocation, Line)
        .join(Redemption, Redemption.id == Allocation.redemption_id)
        .join(Line, Line.id == Allocation.line_id)
        .where(Redemption.event_id == event.id)
        .order_by(Redemption.id, Allocation.id)
    ).all()
    names = campaign_names(session, event.brand_id)
    transactions = session.scalars(
        select(Transaction).where(Transaction.event_id == event.id).order_by(Transaction.seq)
    ).all()
    cards = session.scalars(
        select(GiftCard).where(GiftCard.event_id == event.id).order_by(GiftCard.rewarded_at)
    ).all()
    tiers = session.scalars(
        select(TierChange).where(TierChange.event_id == event.id).order_by(TierChange.at)
    ).all()
    return {
        "gift_card": [
            {
                "code": card.code,
                "reward_id": str(card.reward_id),
                "customer_id": str(card.customer_id),
                "rewarded_at": iso(card.rewarded_at),
                "description": card.description,
                "expired_at": iso(card.expired_at),
                "redeemed_at": iso(card.redeemed_at),
                "voided_at": iso(card.voided_at),
            }
            for card in cards
        ],
        "accumulations": [line_view(line) for line in lines],
        "redemptions": [line_view(line, allocation.amount) for allocation, line in allocations],
        "transactions": [
            transaction_view(tx, session.get(Line, tx.line_id) if tx.line_id else None, names)
            for tx in transactions
        ],
        "customer_by_tier": [
            {
                "customer_id": str(change.customer_id),
                "from_tier": change.from_tier,
                "to_tier": change.to_tier,
                "at": iso(change.at),
            }
            for change in tiers
        ],
    }


def test_the_result_parts_are_what_the_python_formats_make_of_the_rows(
    db_factory: Callable[[], Any],
) -> None:
    world = World.create(db_factory, {"tiers": TIERS})
    with unit_of_work(db_factory) as session:
        # A cost with cents: 250 points cost 87.5 (a float), 300 cost 105 (an int).
        session.execute(
            update(Reward).where(Reward.id == world.reward_id).values(cost=Decimal("0.35"))
        )
    customer = uuid.uuid4()
    whole_second = datetime(2031, 1, 1, tzinfo=UTC)  # no microseconds: none shown
    with_micros = datetime(2031, 6, 1, 12, 30, 5, 123400, tzinfo=UTC)
    earned = world.event(customer, accumulate=[(300, whole_second), (250, with_micros), 50])
    spent = world.event(customer, accumulate=[40], redeem=[120], gift_cards=2)
    reversed_ = world.event(customer, accumulate=[200, 70], gift_cards=1)
    world.reverse(reversed_)  # negative transactions, reverses_id, a voided card, tiers back
    pending = world.submit(customer, accumulate=[10])  # nothing applied yet
    with unit_of_work(db_factory) as session:
        # Text that JSON must escape, or that is not ASCII, in the event's own fields
        # and in a part PostgreSQL builds (a transaction's campaign name).
        odd = 'Été "vingt" \\ ☃ \u2028\n'
        session.execute(
            update(Campaign).where(Campaign.brand_id == world.brand_id).values(name=odd)
        )
        session.execute(update(Event).where(Event.id == spent).values(data={odd: [odd]}, error=odd))
    ids = [earned, spent, reversed_, pending, earned]  # one twice: its view twice
    with unit_of_work(db_factory) as session:
        events = [session.get_one(Event, event_id) for event_id in ids]
        views = event_views(session, events)
        documents = event_documents(session, events)
        expected = [_expected(session, event) for event in events]
    # The answers' JSON text (the single reversal's 202) is the view, key for key, in order.
    for document, view in zip(documents, views, strict=True):
        assert json.dumps(json.loads(document)) == json.dumps(view)
    assert views[1]["data"] == {odd: [odd]} and views[1]["error"] == odd
    names = {t["attributes"]["campaign_name"] for t in views[1]["result"]["transactions"]}
    assert names == {odd}
    for view, want in zip(views, expected, strict=True):
        got = {part: view["result"][part] for part in want}
        # Compared as JSON text: the same values, types and order (87.5, not "87.50").
        assert json.dumps(got) == json.dumps(want)
    # The scenarios are there: not a comparison of empty lists.
    parts = {part: sum(len(e[part]) for e in expected) for part in expected[0]}
    assert all(count > 0 for count in parts.values()), parts
    costs = [t["cost"] for e in expected for t in e["transactions"]]
    assert any(isinstance(c, float) for c in costs) and any(isinstance(c, int) for c in costs)
    stamps = [a["expiration_date"] for a in expected[0]["accumulations"]]
    assert "2031-01-01T00:00:00Z" in stamps and "2031-06-01T12:30:05.123400Z" in stamps
    world.check()
