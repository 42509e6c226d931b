"""Beat's periodic work, each unit in its own transaction: expire lines and reservations."""

from __future__ import annotations

from sqlalchemy import select

from worker.db import unit_of_work
from worker.ledger.expiry import due_lines, expire_wallet
from worker.ledger.reservations import expire
from worker.ledger.wallet import utcnow
from worker.models import Event, EventStatus
from worker.processing import SessionFactory


def expire_lines(batch: int = 500, factory: SessionFactory = None) -> int:
    """Expire points past their date, one (customer, reward) per transaction. Returns points."""
    with unit_of_work(factory) as session:
        due = due_lines(session, utcnow(), batch)
    total = 0
    for customer_id, reward_id in due:
        with unit_of_work(factory) as session:
            total += expire_wallet(session, customer_id, reward_id, utcnow())
    return total


def expire_reservations(batch: int = 500, factory: SessionFactory = None) -> int:
    """Reserved events past `reservation_expires_at` become EXPIRED. Returns how many."""
    count = 0
    for _ in range(batch):
        with unit_of_work(factory) as session:
            event = session.scalars(
                select(Event)
                .where(
                    Event.status == EventStatus.RESOLVED.value,
                    Event.fulfilled.is_(False),
                    Event.reservation_expires_at <= utcnow(),
                )
                .order_by(Event.reservation_expires_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if event is None:
                return count
            expire(event)
            event.updated_at = utcnow()
            count += 1
    return count
