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
        event = session.get(Event, event_id, with_for_update=True)
        if event is None:
            raise LedgerError(f"event {event_id} does not exist")
        structlog.contextvars.bind_contextvars(brand_id=str(event.brand_id))
        if event.queue_message_id != message_id or event.status not in IN_FLIGHT:
            bound.info("message_ignored", status=event.status)
            return "IGNORED"
        now = utcnow()
        event.status = EventStatus.PROCESSING.value
        event.processing_at = now
        event.updated_at = now
        reversal = is_reversal(event)
        if reversal:
            event.reversal_status = ReversalStatus.PROCESSING.value
            event.reversal_attempts += 1
            attempts = event.reversal_attempts
        else:
            event.attempts += 1
            attempts = event.attempts
    # A message that keeps killing its worker never reaches a retry handler:
    # count claims, and stop after the same number of tries a retry would get.
    if attempts > get_settings().task_max_retries + 1:
        fail_event(event_id, message_id, f"gave up after {attempts - 1} attempts", factory)
        return EventStatus.FAILED.value

    try:
        with unit_of_work(factory) as session:
            event = session.get_one(Event, event_id, with_for_update=True)
            if event.queue_message_id != message_id or event.status != EventStatus.PROCESSING:
                bound.info("message_ignored", status=event.status)
                return "IGNORED"
            if reversal:
                brand = session.get_one(Brand, event.brand_id)
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
