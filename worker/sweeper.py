"""Re-enqueue requests left in flight past their lease (SPEC §7).

PostgreSQL is the source of truth: a lost publish, a flushed Redis or a dead
worker leaves the row PENDING or PROCESSING, and this publishes it again with
the same `queue_message_id`. Duplicates are harmless (see worker.processing).
"""

from __future__ import annotations

import functools
from datetime import timedelta

from sqlalchemy import select

from worker.db import on_commit, unit_of_work
from worker.ledger.wallet import utcnow
from worker.models import Event
from worker.processing import IN_FLIGHT, SessionFactory, task_name_for
from worker.publish import publish


def sweep(lease_seconds: float, limit: int = 1000, factory: SessionFactory = None) -> int:
    """Publish again every event in flight for longer than the lease. Returns how many."""
    with unit_of_work(factory) as session:
        now = utcnow()
        stuck = session.scalars(
            select(Event)
            .where(
                Event.status.in_(IN_FLIGHT),
                Event.updated_at < now - timedelta(seconds=lease_seconds),
            )
            .order_by(Event.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for event in stuck:
            event.updated_at = now
            name, event_id, message_id = task_name_for(event), event.id, event.queue_message_id
            on_commit(session, functools.partial(publish, name, event_id, message_id))
        return len(stuck)
