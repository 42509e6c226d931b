"""One delivery of an event's message, as plain functions (no Celery here).

Two short transactions, both owned here: the claim (PENDING → PROCESSING, an
attempt counted, visible to clients and to the sweeper) and the work (the ledger
change and the terminal status, all or nothing). A message whose id is not the
event's current `queue_message_id`, or an event no longer in flight, changes
nothing: that is what makes redelivery, duplicate publishes and replays safe.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from worker.db import unit_of_work
from worker.ledger.errors import InsufficientBalance, LedgerError, ShortfallRefused
from worker.ledger.record import record_event
from worker.ledger.reverse import reverse_event
from worker.ledger.wallet import utcnow
from worker.models import Brand, DeadLetter, Event, EventStatus, ReversalStatus, Shortfall
from worker.settings import get_settings

log = structlog.get_logger(__name__)

# Refusals are the ledger's answer to the request, not faults: FAILED, no dead letter.
REFUSALS = (InsufficientBalance, ShortfallRefused)
IN_FLIGHT = (EventStatus.PENDING.value, EventStatus.PROCESSING.value)
SessionFactory = Callable[[], Session] | None


def is_reversal(event: Event) -> bool:
    return event.reversal_status in (ReversalStatus.PENDING, ReversalStatus.PROCESSING)


def task_name_for(event: Event) -> str:
    return "reversals.reverse_event" if is_reversal(event) else "reversals.process_event"


def handle_message(event_id: uuid.UUID, message_id: str, factory: SessionFactory = None) -> str:
    """Process or reverse the event this message names. Returns the outcome.

    Transient database errors propagate (the task retries them); a LedgerError
    ends the event FAILED at once.
    """
    bound = log.bind(event_id=str(event_id), queue_message_id=message_id)
    with unit_of_work(factory) as session:
        claimed = claim(session, event_id, message_id)
        if claimed is None:
            current = session.execute(
                select(Event.brand_id, Event.status).where(Event.id == event_id)
            ).one_or_none()
            if current is None:
                raise LedgerError(f"event {event_id} does not exist")
            structlog.contextvars.bind_contextvars(brand_id=str(current.brand_id))
            bound.info("message_ignored", status=current.status)
            return "IGNORED"
        brand_id, reversal, attempts = claimed
        structlog.contextvars.bind_contextvars(brand_id=str(brand_id))
    # A message that keeps killing its worker never reaches a retry handler:
    # count claims, and stop after the same number of tries a retry would get.
    if attempts > get_settings().task_max_retries + 1:
        fail_event(event_id, message_id, f"gave up after {attempts - 1} attempts", factory)
        return EventStatus.FAILED.value

    try:
        with unit_of_work(factory) as session:
            # The event (locked) and its brand in one query; the brand stays in the
            # session for the ledger's reads of its settings.
            event, brand = session.execute(
                select(Event, Brand)
                .join(Brand, Brand.id == Event.brand_id)
                .where(Event.id == event_id)
                .with_for_update(of=Event)
            ).one()
            if event.queue_message_id != message_id or event.status != EventStatus.PROCESSING:
                bound.info("message_ignored", status=event.status)
                return "IGNORED"
            if reversal:
                policy = Shortfall(
                    event.reversal_policy or brand.settings.get("shortfall") or "negative"
                )
                reverse_event(session, event, policy)
            else:
                record_event(session, event)
            event.updated_at = utcnow()
            outcome = event.status
    except LedgerError as exc:
        bound.info("event_failed", error=str(exc))
        letter = None
        if not isinstance(exc, REFUSALS):
            # Not a business refusal: the ledger itself is wrong. Keep it for an operator.
            letter = {
                "task_name": "reversals.reverse_event" if reversal else "reversals.process_event",
                "task_id": message_id,
                "payload": {"args": [str(event_id), message_id]},
                "traceback": traceback.format_exc(),
                "attempts": attempts,
            }
        fail_event(event_id, message_id, str(exc), factory, dead_letter=letter)
        return EventStatus.FAILED.value
    bound.info("event_done", outcome=outcome, reversal=reversal)
    return outcome


def claim(
    session: Session, event_id: uuid.UUID, message_id: str
) -> tuple[uuid.UUID, bool, int] | None:
    """PENDING → PROCESSING and one more attempt, in one statement, if this message
    is the event's current one and the event is in flight.

    Returns (brand id, whether it is a reversal, attempts so far), or None when the
    message is stale or the event is done or missing.
    """
    reversal = Event.reversal_status.in_(
        (ReversalStatus.PENDING.value, ReversalStatus.PROCESSING.value)
    )
    now = utcnow()
    row = session.execute(
        update(Event)
        .where(
            Event.id == event_id,
            Event.queue_message_id == message_id,
            Event.status.in_(IN_FLIGHT),
        )
        .values(
            status=EventStatus.PROCESSING.value,
            processing_at=now,
            updated_at=now,
            # SET expressions see the row as it was: `reversal` is the old status.
            reversal_status=case(
                (reversal, ReversalStatus.PROCESSING.value), else_=Event.reversal_status
            ),
            reversal_attempts=Event.reversal_attempts + case((reversal, 1), else_=0),
            attempts=Event.attempts + case((reversal, 0), else_=1),
        )
        .returning(Event.brand_id, Event.reversal_status, Event.reversal_attempts, Event.attempts)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    is_rev = row.reversal_status == ReversalStatus.PROCESSING
    return row.brand_id, is_rev, row.reversal_attempts if is_rev else row.attempts


def fail_event(
    event_id: uuid.UUID | None,
    message_id: str,
    error: str,
    factory: SessionFactory = None,
    dead_letter: dict[str, Any] | None = None,
) -> bool:
    """End an in-flight event FAILED (its ledger untouched), optionally dead-lettered."""
    with unit_of_work(factory) as session:
        event = session.get(Event, event_id, with_for_update=True) if event_id else None
        now = utcnow()
        if dead_letter is not None:
            record_dead_letter(session, event_id, dead_letter, error, now)
        if event is None or event.queue_message_id != message_id:
            return False
        if event.status not in IN_FLIGHT:
            return False
        event.status = EventStatus.FAILED.value
        event.updated_at = now
        if event.reversal_status is not None:
            event.reversal_status = ReversalStatus.FAILED.value
            event.reversal_last_error = error
            event.reversal_dead_lettered = dead_letter is not None
        else:
            event.error = error
            event.resolved_at = now
        return True


def record_dead_letter(
    session: Session, event_id: uuid.UUID | None, letter: dict[str, Any], error: str, now: Any
) -> None:
    session.add(
        DeadLetter(
            task_name=letter.get("task_name", "unknown"),
            task_id=letter.get("task_id"),
            event_id=event_id,
            payload=letter.get("payload", {}),
            error=error,
            traceback=letter.get("traceback"),
            attempts=int(letter.get("attempts", 1)),
            first_failed_at=now,
            last_failed_at=now,
        )
    )
