"""Line expiry (SPEC §6.2, issue: beat expires lines past their date, in batches)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.ledger.wallet import LIVE_STATES, expire_now, load_context, settle_debts
from worker.models import Event, Line


def due_lines(session: Session, now: datetime, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(customer, reward) pairs that have live points past their date."""
    rows = session.execute(
        select(Line.customer_id, Line.reward_id)
        .where(
            Line.state.in_(LIVE_STATES),
            Line.expiration_date <= now,
            Line.remaining - Line.reserved > 0,
        )
        .group_by(Line.customer_id, Line.reward_id)
        .limit(limit)
    )
    return [(customer, reward) for customer, reward in rows]


def expire_wallet(
    session: Session, customer_id: uuid.UUID, reward_id: uuid.UUID, now: datetime
) -> int:
    """Expire one customer's lines of one reward that are past their date. Returns points."""
    lines = session.scalars(
        select(Line)
        .where(
            Line.customer_id == customer_id,
            Line.reward_id == reward_id,
            Line.state.in_(LIVE_STATES),
            Line.expiration_date <= now,
        )
        .order_by(Line.expiration_date, Line.id)
    ).all()
    expired = 0
    for line in lines:
        # Each EXPIRATION belongs to the event that created the line.
        event = session.get_one(Event, line.event_id)
        ctx = load_context(session, event, [reward_id], now)  # locks the wallet first
        session.refresh(line, with_for_update=True)
        before = line.expired
        expire_now(ctx, line, "line expired")
        expired += line.expired - before
        settle_debts(ctx, [reward_id])
    return expired
