"""What the HTTP intake asks of the ledger: plain functions over a session.

The caller (the API's request wrapper) owns the transaction. Each function
registers its publish with `on_commit`, so a message never leaves before its row
is committed, and the Celery task id is the event's `queue_message_id`.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db import on_commit
from worker.ledger.errors import LedgerError
from worker.ledger.reservations import fulfil
from worker.ledger.reverse import reverse_event
from worker.ledger.views import event_view
from worker.ledger.wallet import utcnow
from worker.metrics import REVERSE_TASK
from worker.models import (
    Brand,
    Campaign,
    Customer,
    Event,
    EventStatus,
    ReversalStatus,
    Reward,
    Shortfall,
    one_of,
)
from worker.processing import EVENT_WITH_BRAND, NOT_READ_BY_A_REVERSAL, task_name_for
from worker.publish import publish, publish_batch


class IntakeError(Exception):
    """A request refused at intake; nothing was written."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def not_found(event_id: uuid.UUID) -> IntakeError:
    return IntakeError(404, "not_found", f"event {event_id} not found")


def enqueue(session: Session, event: Event, batch_message_id: str | None = None) -> None:
    """Give the event a new message id and publish it once the transaction commits.

    With `batch_message_id`, the event joins that message (a bulk request's batch),
    which the caller publishes, after the commit, with all of its events.
    """
    event.queue_message_id = batch_message_id or str(uuid.uuid4())
    event.updated_at = utcnow()
    if batch_message_id is None:
        on_commit(
            session,
            functools.partial(publish, task_name_for(event), event.id, event.queue_message_id),
        )


def get_event(
    session: Session, brand_id: uuid.UUID, event_id: uuid.UUID, lock: bool = False
) -> Event:
    event = session.get(Event, event_id, with_for_update=lock)
    # Another brand's event answers exactly as a missing one (SPEC §4).
    if event is None or event.brand_id != brand_id:
        raise not_found(event_id)
    return event


def create_event(session: Session, brand_id: uuid.UUID, body: dict[str, Any]) -> tuple[Event, bool]:
    """Record an event PENDING and enqueue it. A known client id returns the existing event."""
    event_id: uuid.UUID | None = body.get("id")
    if event_id is not None:
        existing = session.get(Event, event_id)
        if existing is not None:
            if existing.brand_id != brand_id:
                raise IntakeError(409, "conflict", "this event id is already taken")
            return existing, False
    _check_references(session, brand_id, body)
    customer_id: uuid.UUID = body["customer_id"]
    customer = session.get(Customer, customer_id)
    if customer is None:
        session.add(Customer(id=customer_id, brand_id=brand_id))
        session.flush()
    elif customer.brand_id != brand_id:
        raise IntakeError(409, "conflict", "this customer id is already taken")
    now = utcnow()
    event = Event(
        id=event_id or uuid.uuid4(),
        brand_id=brand_id,
        customer_id=customer_id,
        type=body.get("type") or "PURCHASE",
        data=body.get("data") or {},
        fulfilled=body.get("fulfilled", True),
        reserve=body.get("reserve"),
        channel_id=body.get("channel_id"),
        store_id=body.get("store_id"),
        rewarding_campaigns=body.get("rewarding_campaigns") or [],
        request={
            "accumulate": body.get("accumulate") or [],
            "redeem": body.get("redeem") or [],
            "gift_cards": body.get("gift_cards") or [],
        },
        status=EventStatus.PENDING.value,
        queue_message_id="",
        issued_at=body.get("issued_at") or now,
    )
    session.add(event)
    enqueue(session, event)
    session.flush()
    return event, True


def _check_references(session: Session, brand_id: uuid.UUID, body: dict[str, Any]) -> None:
    items = (
        (body.get("accumulate") or []) + (body.get("redeem") or []) + (body.get("gift_cards") or [])
    )
    reward_ids = {uuid.UUID(str(i["reward_id"])) for i in items}
    campaign_ids = {uuid.UUID(str(i["campaign_id"])) for i in items if i.get("campaign_id")}
    known_rewards = set(
        session.scalars(
            select(Reward.id).where(Reward.id.in_(reward_ids), Reward.brand_id == brand_id)
        )
    )
    known_campaigns = set(
        session.scalars(
            select(Campaign.id).where(Campaign.id.in_(campaign_ids), Campaign.brand_id == brand_id)
        )
    )
    unknown = [f"reward {i}" for i in sorted(reward_ids - known_rewards, key=str)]
    unknown += [f"campaign {i}" for i in sorted(campaign_ids - known_campaigns, key=str)]
    if unknown:
        raise IntakeError(422, "unknown_reference", "unknown " + ", ".join(unknown), unknown)


@dataclass
class ReversalAnswer:
    status_code: int
    event: Event
    view: dict[str, Any] | None = None  # set for a dry run: the event as it would be


def request_reversal(
    session: Session,
    brand_id: uuid.UUID,
    event_id: uuid.UUID,
    reason: str,
    *,
    shortfall: str | None = None,
    dry_run: bool = False,
    batch_message_id: str | None = None,
    locked: Event | None = None,
    brand: Brand | None = None,
) -> ReversalAnswer:
    """Decide a reversal request (SPEC §4, §5) and, if accepted, enqueue it (alone, or
    in the batch `batch_message_id` that the caller publishes).

    `locked` is the event when the caller has already read and locked it (a bulk
    request locks all of its events in one query), and `brand` the caller's brand.
    """
    if locked is None:
        found = session.execute(EVENT_WITH_BRAND, {"event_id": event_id}).one_or_none()
        if found is None:
            raise not_found(event_id)
        event, brand = found
    else:
        event = locked
    if event.id != event_id or event.brand_id != brand_id:
        raise not_found(event_id)
    if event.status == EventStatus.REVERSED:
        return ReversalAnswer(200, event, _as_is(session, event) if dry_run else None)
    if event.reversal_status in (ReversalStatus.PENDING, ReversalStatus.PROCESSING):
        # Already accepted and in flight: the same answer again, nothing new enqueued.
        if dry_run:
            return ReversalAnswer(200, event, _as_is(session, event))
        return ReversalAnswer(202, event)
    reversible = event.status == EventStatus.RESOLVED or (
        event.status == EventStatus.FAILED and event.reversal_status == ReversalStatus.FAILED
    )
    if not reversible:
        raise IntakeError(409, "not_reversible", _why_not(event), {"status": event.status})
    brand = brand or session.get_one(Brand, brand_id)
    window = brand.settings.get("reversal_window_days")
    if window is not None and event.issued_at < utcnow() - timedelta(days=int(window)):
        raise IntakeError(
            409,
            "reversal_window_passed",
            f"event was issued more than {window} day(s) ago; the brand's window has passed",
        )
    if dry_run:
        return ReversalAnswer(200, event, _dry_run(session, event, shortfall, brand))

    now = utcnow()
    event.status = EventStatus.PENDING.value
    event.reversal_reason = reason
    event.reversal_requested_at = now
    event.reversal_status = ReversalStatus.PENDING.value
    event.reversal_attempts = 0
    event.reversal_last_error = None
    event.reversal_dead_lettered = False
    event.reversal_policy = shortfall
    event.reversal_shortfall = None
    enqueue(session, event, batch_message_id)
    return ReversalAnswer(202, event)


# The requested events with their brands, locked in id order (request_reversals).
_REQUESTED = (
    select(Event, Brand)
    .join(Brand, Brand.id == Event.brand_id)
    .where(one_of(Event.id, "event_ids"), one_of(Event.brand_id, "brand_ids"))
    .order_by(Event.id)
    .with_for_update(of=Event)
)
_REQUESTED_FOR_REVERSAL = _REQUESTED.options(*NOT_READ_BY_A_REVERSAL)


@dataclass(frozen=True)
class ReversalRequest:
    """One event's reversal, as a caller asked for it (a bulk item, or a single request)."""

    brand_id: uuid.UUID
    event_id: uuid.UUID
    reason: str
    shortfall: str | None = None


def request_reversals(
    session: Session,
    requests: Sequence[ReversalRequest],
    batch_size: int,
    *,
    views: bool = False,
) -> list[ReversalAnswer | IntakeError]:
    """Decide many reversal requests in one transaction, each as `request_reversal` would.

    The events are read and locked in one query, in id order, so that two callers
    sharing events cannot deadlock. An item is decided before anything of it is
    written, so a refused item (its IntakeError, in its place in the answer) changes
    nothing. The accepted events travel in batches: at most `batch_size` events of one
    brand per message, each published once the transaction commits. With `views`, the
    events' JSON is loaded too, for answers that show the whole event.
    """
    found = session.execute(
        _REQUESTED if views else _REQUESTED_FOR_REVERSAL,
        {
            "event_ids": list({r.event_id for r in requests}),
            "brand_ids": list({r.brand_id for r in requests}),
        },
    ).all()
    events = {event.id: event for event, _ in found}
    brands = {brand.id: brand for _, brand in found}
    batches: dict[uuid.UUID, tuple[str, list[uuid.UUID]]] = {}
    answers: list[ReversalAnswer | IntakeError] = []
    for item in requests:
        batch = batches.get(item.brand_id)
        if batch is None or len(batch[1]) >= batch_size:
            if batch is not None:
                _publish_after_commit(session, *batch)
            batch = batches[item.brand_id] = (str(uuid.uuid4()), [])
        event = events.get(item.event_id)
        try:
            if event is None:
                raise not_found(item.event_id)
            answer = request_reversal(
                session,
                item.brand_id,
                item.event_id,
                item.reason,
                shortfall=item.shortfall,
                batch_message_id=batch[0],
                locked=event,
                brand=brands[event.brand_id],
            )
        except IntakeError as exc:
            answers.append(exc)
            continue
        # Accepted now, not already in flight (nor named twice in one batch).
        if event.queue_message_id == batch[0] and event.id not in batch[1]:
            batch[1].append(event.id)
        answers.append(answer)
    for batch in batches.values():
        _publish_after_commit(session, *batch)
    return answers


def _publish_after_commit(session: Session, message_id: str, event_ids: list[uuid.UUID]) -> None:
    if len(event_ids) == 1:
        # A batch of one travels as a single reversal's message: its own task, as a
        # request alone always has (the same claim, logs and metrics).
        on_commit(session, functools.partial(publish, REVERSE_TASK, event_ids[0], message_id))
    elif event_ids:
        on_commit(session, functools.partial(publish_batch, message_id, event_ids))


def fulfil_event(session: Session, brand_id: uuid.UUID, event_id: uuid.UUID) -> Event:
    """PATCH .../fulfill: apply a reserved event now, in the request's transaction."""
    event = get_event(session, brand_id, event_id, lock=True)
    if event.fulfilled:
        if event.status == EventStatus.RESOLVED:
            return event  # already fulfilled: the same answer again
        raise IntakeError(409, "not_reserved", f"event is {event.status}, not a reservation")
    if event.status != EventStatus.RESOLVED:
        raise IntakeError(
            409, "not_fulfillable", f"event is {event.status} and cannot be fulfilled"
        )
    fulfil(event)
    event.updated_at = utcnow()
    return event


def _why_not(event: Event) -> str:
    if event.status in (EventStatus.PENDING, EventStatus.PROCESSING):
        return "event is still being processed; it can be reversed once RESOLVED"
    if event.status == EventStatus.FAILED:
        return "event failed when it was processed and changed nothing; there is nothing to reverse"
    return f"event is {event.status} and cannot be reversed"


def _as_is(session: Session, event: Event) -> dict[str, Any]:
    """A dry run where a real request would change nothing: the event as it stands."""
    return {**event_view(session, event), "dry_run": True}


def _dry_run(session: Session, event: Event, shortfall: str | None, brand: Brand) -> dict[str, Any]:
    """Run the real reversal inside a savepoint, show the result, roll it back."""
    policy = Shortfall(shortfall or brand.settings.get("shortfall") or "negative")
    savepoint = session.begin_nested()
    try:
        try:
            reverse_event(session, event, policy)
            view = event_view(session, event)
        except LedgerError as exc:
            event.status = EventStatus.FAILED.value
            event.reversal_status = ReversalStatus.FAILED.value
            event.reversal_last_error = str(exc)
            event.reversal_requested_at = event.reversal_requested_at or utcnow()
            view = event_view(session, event)
        view["dry_run"] = True
        return view
    finally:
        savepoint.rollback()
        session.expire_all()


def iso_or_now(value: datetime | None) -> datetime:
    return value or utcnow()
