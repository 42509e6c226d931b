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
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import structlog
from sqlalchemy import DateTime, bindparam, case, select, text, update
from sqlalchemy.orm import Session, defer

from worker.db import unit_of_work
from worker.ledger.errors import InsufficientBalance, LedgerError, ShortfallRefused
from worker.ledger.record import record_event
from worker.ledger.reverse import read_ahead, reverse_event
from worker.ledger.wallet import utcnow
from worker.models import (
    IN_FLIGHT_SQL,
    Brand,
    DeadLetter,
    Event,
    EventStatus,
    ReversalStatus,
    Shortfall,
    one_of,
)
from worker.settings import get_settings

log = structlog.get_logger(__name__)

# Refusals are the ledger's answer to the request, not faults: FAILED, no dead letter.
REFUSALS = (InsufficientBalance, ShortfallRefused)
IN_FLIGHT = (EventStatus.PENDING.value, EventStatus.PROCESSING.value)
DONE = tuple(status.value for status in EventStatus if status.value not in IN_FLIGHT)
SessionFactory = Callable[[], Session] | None
BATCH_TASK = "reversals.reverse_events"  # a bulk request's events under one message


def is_reversal(event: Event) -> bool:
    return event.reversal_status in (ReversalStatus.PENDING, ReversalStatus.PROCESSING)


def task_name_for(event: Event) -> str:
    return "reversals.reverse_event" if is_reversal(event) else "reversals.process_event"


class Claimed(NamedTuple):
    brand_id: uuid.UUID
    reversal: bool
    attempts: int  # this delivery's, counted


def handle_message(
    event_id: uuid.UUID, message_id: str, factory: SessionFactory = None, take: int | None = None
) -> str:
    """Process or reverse the event this message names. Returns its outcome."""
    return deliver(event_id, message_id, factory, take).outcomes[event_id]


class Delivery(NamedTuple):
    """What one message's delivery decided, once committed."""

    outcomes: dict[uuid.UUID, str]  # of every event it decided, its own first
    taken: tuple[str, ...] = ()  # the own message ids of the reversals it took along


def deliver(
    event_id: uuid.UUID, message_id: str, factory: SessionFactory = None, take: int | None = None
) -> Delivery:
    """Process or reverse the event this message names. Returns the outcome of every
    event the delivery decided, its own first, and the messages of those it took.

    A reversal's delivery also takes up to `take` (TAKE_WAITING) other reversals
    that wait for their own messages (a backlog), and does them all in one
    transaction, as a bulk batch is done; their messages then find them done and
    change nothing (IGNORED), unless the task has the workers drop them unopened
    first (worker.tasks.revoke_taken).

    Transient database errors propagate (the task retries them); a LedgerError
    ends the event FAILED at once.
    """
    bound = log.bind(event_id=str(event_id), queue_message_id=message_id)
    with unit_of_work(factory) as session:
        claimed = claim(session, [event_id], message_id).get(event_id)
        if claimed is None:
            current = session.connection().execute(_STATUS, {"event_id": event_id}).one_or_none()
            if current is None:
                raise LedgerError(f"event {event_id} does not exist")
            structlog.contextvars.bind_contextvars(brand_id=str(current.brand_id))
            bound.info("message_ignored", status=current.status)
            return Delivery({event_id: "IGNORED"})
        limit = get_settings().take_waiting if take is None else take
        taken = {}
        if claimed.reversal and limit:
            taken = take_waiting(session, event_id, claimed.brand_id, limit)
    structlog.contextvars.bind_contextvars(brand_id=str(claimed.brand_id))
    if not taken:
        payload = [str(event_id), message_id]
        return Delivery({event_id: apply(event_id, message_id, claimed, factory, payload)})
    owners = {event_id: message_id, **{e: t.message_id for e, t in taken.items()}}
    claims = {event_id: claimed, **{e: t.claimed for e, t in taken.items()}}
    log.info("took_waiting", queue_message_id=message_id, taken=len(taken))
    outcomes = reverse_all(owners, claims, factory)
    return Delivery(outcomes, tuple(t.message_id for t in taken.values()))


def handle_batch(
    event_ids: Sequence[uuid.UUID],
    message_id: str,
    factory: SessionFactory = None,
    take: int | None = None,
) -> dict[str, int]:
    """`deliver_batch`'s outcomes, counted."""
    return counted(deliver_batch(event_ids, message_id, factory, take), event_ids)


def counted(delivery: Delivery, event_ids: Sequence[uuid.UUID]) -> dict[str, int]:
    """A batch delivery's outcomes by kind, its events found done (IGNORED) included."""
    outcomes = Counter(delivery.outcomes.values())
    outcomes["IGNORED"] += len(set(event_ids) - delivery.outcomes.keys())
    return {k: v for k, v in outcomes.items() if v}


def deliver_batch(
    event_ids: Sequence[uuid.UUID],
    message_id: str,
    factory: SessionFactory = None,
    take: int | None = None,
) -> Delivery:
    """Reverse the events published together under one message id (a bulk request's
    batch, or single requests the api decided together), and the waiting reversals
    of their brand that the batch has room to take along (up to TAKE_WAITING + 1
    events in all, as a single reversal's delivery does: a backlog of small batches
    then clears as fast as one of single requests).

    One claim for all of them (one commit), then all of their reversals in one
    transaction (reverse_all). A redelivery finds the events already done no longer
    in flight. Transient errors propagate; the whole message is retried.
    """
    with unit_of_work(factory) as session:
        claimed = claim(session, event_ids, message_id)
        room = (get_settings().take_waiting if take is None else take) + 1 - len(claimed)
        # A batch is one brand's (one bulk request's, or grouped by brand by the api).
        first = next(iter(claimed.values()), None)
        taken = {}
        if first is not None and first.reversal and room > 0:
            taken = take_waiting(session, event_ids[0], first.brand_id, room)
    owners = {event_id: message_id for event_id in dict.fromkeys(event_ids) if event_id in claimed}
    owners.update({e: t.message_id for e, t in taken.items()})
    claimed.update({e: t.claimed for e, t in taken.items()})
    if taken:
        log.info("took_waiting", queue_message_id=message_id, taken=len(taken))
    outcomes = reverse_all(owners, claimed, factory, batch=list(event_ids))
    return Delivery(outcomes, tuple(t.message_id for t in taken.values()))


def reverse_all(
    owners: dict[uuid.UUID, str],
    claimed: dict[uuid.UUID, Claimed],
    factory: SessionFactory,
    batch: list[uuid.UUID] | None = None,
) -> dict[uuid.UUID, str]:
    """Claimed reversals, each owned by its message (`owners`, in order), all in one
    transaction, read ahead together. Returns each event's outcome.

    Should one of them be refused or find the ledger wrong, that transaction is
    rolled back whole and the events are done one by one, each in its own
    transaction exactly as a single message's, so that an event's failure stays
    its own. `batch` is the batch message's events (what their dead letters keep);
    an event taken along from another message keeps its own message's single body,
    which a replay can deliver whatever that message carried.
    """
    try:
        together = _reverse_together(owners, claimed, factory)
    except LedgerError as exc:
        log.info("batch_one_by_one", reason=str(exc))
        together = None
    if together is not None:
        return together
    outcomes = {}
    in_batch = set(batch or ())
    batch_ids = [str(e) for e in batch or ()]
    for event_id, message_id in owners.items():  # in order
        payload: list[Any] = [str(event_id), message_id]
        if event_id in in_batch:
            payload = [message_id, batch_ids]
        with structlog.contextvars.bound_contextvars(
            event_id=str(event_id), brand_id=str(claimed[event_id].brand_id)
        ):
            outcomes[event_id] = apply(
                event_id,
                message_id,
                claimed[event_id],
                factory,
                payload,
                batch_task=BATCH_TASK if event_id in in_batch else None,
            )
    return outcomes


def _reverse_together(
    owners: dict[uuid.UUID, str],
    claimed: dict[uuid.UUID, Claimed],
    factory: SessionFactory,
) -> dict[uuid.UUID, str] | None:
    """The reversals in one transaction, in order; None when one of the events must be
    handled alone (not a reversal, or out of tries)."""
    limit = get_settings().task_max_retries + 1
    if any(not claimed[e].reversal or claimed[e].attempts > limit for e in owners):
        return None
    outcomes: dict[uuid.UUID, str] = {}
    if not owners:
        return outcomes
    with unit_of_work(factory) as session:
        found = session.execute(EVENTS_WITH_BRANDS, {"event_ids": list(owners)}).all()
        by_id = {event.id: (event, brand) for event, brand in found}
        mine = []
        for event_id, message_id in owners.items():
            if event_id in by_id and _delivered_to(by_id[event_id][0], message_id):
                mine.append(by_id[event_id])
            else:
                outcomes[event_id] = "IGNORED"
        now = utcnow()
        # Every customer is locked here, in customer order, before any event's work.
        ahead = read_ahead(session, [event for event, _ in mine], now)
        for event, brand in mine:
            reverse_event(session, event, _policy(event, brand), now, ahead[event.id])
            event.updated_at = now
            outcomes[event.id] = event.status
    for event, _ in mine:  # logged once committed
        log.info(
            "event_done",
            event_id=str(event.id),
            brand_id=str(event.brand_id),
            queue_message_id=owners[event.id],
            outcome=outcomes[event.id],
            reversal=True,
        )
    return outcomes


def _delivered_to(event: Event, message_id: str) -> bool:
    """Whether this message's claim still holds the event (read again, locked)."""
    return event.queue_message_id == message_id and event.status == EventStatus.PROCESSING


def _policy(event: Event, brand: Brand) -> Shortfall:
    """The request's shortfall policy, else the brand's, else `negative`."""
    return Shortfall(event.reversal_policy or brand.settings.get("shortfall") or "negative")


def apply(
    event_id: uuid.UUID,
    message_id: str,
    claimed: Claimed,
    factory: SessionFactory,
    payload: list[Any],
    *,
    batch_task: str | None = None,
) -> str:
    """The work of a claimed delivery: the ledger change and the terminal status."""
    bound = log.bind(event_id=str(event_id), queue_message_id=message_id)
    reversal, attempts = claimed.reversal, claimed.attempts
    # A message that keeps killing its worker never reaches a retry handler:
    # count claims, and stop after the same number of tries a retry would get.
    if attempts > get_settings().task_max_retries + 1:
        fail_event(event_id, message_id, f"gave up after {attempts - 1} attempts", factory)
        return EventStatus.FAILED.value

    try:
        with unit_of_work(factory) as session:
            statement = REVERSAL_WITH_BRAND if reversal else EVENT_WITH_BRAND
            event, brand = session.execute(statement, {"event_id": event_id}).one()
            if not _delivered_to(event, message_id):
                bound.info("message_ignored", status=event.status)
                return "IGNORED"
            if reversal:
                reverse_event(session, event, _policy(event, brand))
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
                "task_name": batch_task
                or ("reversals.reverse_event" if reversal else "reversals.process_event"),
                "task_id": message_id,
                "payload": {"args": payload},
                "traceback": traceback.format_exc(),
                "attempts": attempts,
            }
        fail_event(event_id, message_id, str(exc), factory, dead_letter=letter)
        return EventStatus.FAILED.value
    bound.info("event_done", outcome=outcome, reversal=reversal)
    return outcome


def _claim_statement() -> Any:
    """The claim's UPDATE, built once (as in worker.ledger.wallet): its parameters are
    `claim_ids`, `claim_message_id` and `claim_now`."""
    reversal = Event.reversal_status.in_(
        (ReversalStatus.PENDING.value, ReversalStatus.PROCESSING.value)
    )
    mine = (
        one_of(Event.id, "claim_ids"),
        Event.queue_message_id == bindparam("claim_message_id"),
        # In flight, said as "not done": `status IN ('PENDING', 'PROCESSING')` is
        # ix_events_in_flight's predicate, and with it PostgreSQL may scan that whole
        # index (every event in flight: a backlog of thousands, for each claim)
        # instead of finding the ids by primary key. It did so while its statistics
        # were older than the backlog: 59 µs of PostgreSQL per event claimed in a
        # bulk batch of 100, against 29 by primary key.
        Event.status.not_in(DONE),
    )
    # Rows locked in id order (the lock order for several events), then updated.
    locked = select(Event.id).where(*mine).order_by(Event.id).with_for_update()
    now = bindparam("claim_now", type_=DateTime(timezone=True))
    return (
        update(Event)
        .where(Event.id.in_(locked.scalar_subquery()), *mine)
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
        .returning(
            Event.id,
            Event.brand_id,
            Event.reversal_status,
            Event.reversal_attempts,
            Event.attempts,
        )
        .execution_options(synchronize_session=False)
    )


_CLAIM = _claim_statement()
_STATUS = select(Event.brand_id, Event.status).where(Event.id == bindparam("event_id"))
# The event, locked, and its brand (the worker keeps it in the session for the
# ledger's reads of its settings; the intake reads the reversal window from it).
_WITH_BRAND = select(Event, Brand).join(Brand, Brand.id == Event.brand_id)
EVENT_WITH_BRAND = _WITH_BRAND.where(Event.id == bindparam("event_id")).with_for_update(of=Event)
# A reversal, and a request for one, read none of the event's JSON (what was asked,
# the results before) and only overwrite its results: not loaded, not decoded.
NOT_READ_BY_A_REVERSAL = [
    defer(column)
    for column in (
        Event.data,
        Event.rewarding_campaigns,
        Event.request,
        Event.result_wallet,
        Event.result_customer,
        Event.reversal_shortfall,
    )
]
REVERSAL_WITH_BRAND = EVENT_WITH_BRAND.options(*NOT_READ_BY_A_REVERSAL)
# A bulk batch's events with their brands, locked in id order (the claim's order).
EVENTS_WITH_BRANDS = (
    _WITH_BRAND.where(one_of(Event.id, "event_ids"))
    .order_by(Event.id)
    .with_for_update(of=Event)
    .options(*NOT_READ_BY_A_REVERSAL)
)


def claim(
    session: Session, event_ids: Sequence[uuid.UUID], message_id: str
) -> dict[uuid.UUID, Claimed]:
    """PENDING → PROCESSING and one more attempt, in one statement, for each of these
    events whose current message is this one and that is in flight.

    Events that are missing, done, or owned by another message are left out.
    """
    # On the connection: Core's path, not the ORM's (a bulk UPDATE of no objects).
    params = {"claim_ids": list(event_ids), "claim_message_id": message_id, "claim_now": utcnow()}
    rows = session.connection().execute(_CLAIM, params).all()
    claimed = {}
    for row in rows:
        is_reversal = row.reversal_status == ReversalStatus.PROCESSING
        attempts = row.reversal_attempts if is_reversal else row.attempts
        claimed[row.id] = Claimed(row.brand_id, is_reversal, attempts)
    return claimed


class Taken(NamedTuple):
    message_id: str  # the event's own, still to come
    claimed: Claimed


def _take_waiting_statement() -> Any:
    """A brand's waiting reversals, oldest first, claimed for their own messages: rows
    another transaction holds (being claimed, or requested) are skipped, not waited for."""
    waiting = (
        Event.status == EventStatus.PENDING.value,
        Event.reversal_status == ReversalStatus.PENDING.value,
        Event.brand_id == bindparam("take_brand"),
    )
    # MATERIALIZED: run once. As a plain IN (subquery), PostgreSQL may scan it again
    # for each row it updates, and with SKIP LOCKED each scan finds other rows: the
    # LIMIT no longer bounds what is taken (it took thousands).
    oldest = (
        select(Event.id)
        .where(*waiting, Event.id != bindparam("take_except"))
        .order_by(Event.updated_at)
        .limit(bindparam("take_limit"))
        .with_for_update(skip_locked=True)
        .cte("oldest")
        .prefix_with("MATERIALIZED")
    )
    now = bindparam("take_now", type_=DateTime(timezone=True))
    # The rows the CTE locked are waiting (checked once locked), so the UPDATE finds
    # them by id alone. With `waiting` here again, PostgreSQL may scan every event in
    # flight (ix_events_in_flight's predicate) for each take, as for the claim.
    return (
        update(Event)
        .where(Event.id == oldest.c.id)
        .values(
            status=EventStatus.PROCESSING.value,
            processing_at=now,
            updated_at=now,
            reversal_status=ReversalStatus.PROCESSING.value,
            reversal_attempts=Event.reversal_attempts + 1,
        )
        .returning(
            Event.id,
            Event.brand_id,
            Event.queue_message_id,
            Event.reversal_attempts,
            Event.reversal_requested_at,
        )
        .execution_options(synchronize_session=False)
    )


_TAKE_WAITING = _take_waiting_statement()


def take_waiting(
    session: Session, event_id: uuid.UUID, brand_id: uuid.UUID, limit: int
) -> dict[uuid.UUID, Taken]:
    """Claim up to `limit` of the brand's reversals other than `event_id` that wait for
    their messages, oldest first, in the caller's claim transaction.

    Only the brand's own: a delivery does its tenant's work, under its log context."""
    now = utcnow()
    params = {"take_except": event_id, "take_brand": brand_id, "take_limit": limit}
    rows = list(session.connection().execute(_TAKE_WAITING, {**params, "take_now": now}))
    # In the order they were requested: two of one customer are undone in that order.
    rows.sort(key=lambda row: (row.reversal_requested_at or now, row.id))
    return {
        row.id: Taken(row.queue_message_id, Claimed(row.brand_id, True, row.reversal_attempts))
        for row in rows
    }


# Found in ix_events_in_flight_message: its predicate, word for word.
_UNFINISHED = (
    select(Event.queue_message_id)
    .where(one_of(Event.queue_message_id, "message_ids"))
    .where(text(IN_FLIGHT_SQL))
    .distinct()
)


def finished_messages(session: Session, message_ids: Sequence[str]) -> list[str]:
    """Those of these messages none of whose events is still in flight: a message of
    several events (a batch) whose reversals were not all taken along still has work."""
    unfinished = set(session.scalars(_UNFINISHED, {"message_ids": list(message_ids)}))
    return [m for m in dict.fromkeys(message_ids) if m not in unfinished]


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
