"""Behavior events: record, read, reverse (single and bulk)."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic_core import to_jsonable_python
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api_stub import responses as docs
from api_stub.deps import CurrentBrand, transaction
from api_stub.errors import ApiError
from api_stub.metrics import REVERSALS_ACCEPTED
from api_stub.schemas import BulkReverseIn, EventIn, ReverseIn
from worker.db import on_commit
from worker.intake import (
    IntakeError,
    create_event,
    fulfil_event,
    get_event,
    not_found,
    request_reversal,
)
from worker.ledger.views import event_view
from worker.models import Brand, Event, IdempotencyKey
from worker.processing import NOT_READ_BY_A_REVERSAL
from worker.publish import publish_batch
from worker.settings import get_settings

router = APIRouter(prefix="/behavior/events")


def _json(status: int, data: Any) -> JSONResponse:
    return JSONResponse({"data": data}, status_code=status)


@router.post("", status_code=202, responses=docs.RECORD_EVENT)
def record(body: EventIn, request: Request, who: CurrentBrand) -> JSONResponse:
    payload = to_jsonable_python(body.model_dump())
    payload.update(
        id=body.id,
        customer_id=body.customer_id,
        issued_at=body.issued_at,
        channel_id=body.channel_id,
        store_id=body.store_id,
    )
    with transaction(request) as session:
        event, created = create_event(session, who.brand_id, payload)
        view = event_view(session, event)
    return _json(202 if created else 200, view)


@router.get("/{event_id}", responses=docs.READ_EVENT)
def read(event_id: uuid.UUID, request: Request, who: CurrentBrand) -> JSONResponse:
    with transaction(request) as session:
        return _json(200, event_view(session, get_event(session, who.brand_id, event_id)))


@router.patch("/{event_id}/fulfill", responses=docs.FULFIL_EVENT)
def fulfill(event_id: uuid.UUID, request: Request, who: CurrentBrand) -> JSONResponse:
    """A reserved event becomes fulfilled: its accumulations and redemptions apply now."""
    with transaction(request) as session:
        event = fulfil_event(session, who.brand_id, event_id)
        return _json(200, event_view(session, event))


@router.post("/reverse", status_code=202, responses=docs.REVERSE_BULK)
def reverse_bulk(body: BulkReverseIn, request: Request, who: CurrentBrand) -> JSONResponse:
    results: list[dict[str, Any]] = []
    # Accepted events travel in batches of BULK_BATCH_SIZE, one message each: the
    # per-message cost is paid once per batch, and batches spread over the workers.
    batches: list[tuple[str, list[uuid.UUID]]] = []
    size = get_settings().bulk_batch_size
    with transaction(request) as session:
        # All of the request's events of this brand, read and locked in one query, in
        # id order (two bulk requests sharing events cannot deadlock). An item is
        # decided before anything of it is written: a refused item changes nothing.
        events = {
            event.id: event
            for event in session.scalars(
                select(Event)
                .where(Event.id.in_({item.id for item in body.events}))
                .where(Event.brand_id == who.brand_id)
                .order_by(Event.id)
                .with_for_update()
                # Deciding a request reads none of the event's JSON (a bulk has no dry run).
                .options(*NOT_READ_BY_A_REVERSAL)
            )
        }
        brand = session.get_one(Brand, who.brand_id)
        for item in body.events:
            if not batches or len(batches[-1][1]) >= size:
                batches.append((str(uuid.uuid4()), []))
            batch_id, members = batches[-1]
            try:
                event = events.get(item.id)
                if event is None:
                    raise not_found(item.id)
                answer = request_reversal(
                    session,
                    who.brand_id,
                    item.id,
                    item.reason,
                    shortfall=body.shortfall,
                    batch_message_id=batch_id,
                    locked=event,
                    brand=brand,
                )
            except IntakeError as exc:
                results.append(
                    {
                        "id": str(item.id),
                        "status": "REJECTED",
                        "queue_message_id": None,
                        "error": {"code": exc.code, "message": exc.message},
                    }
                )
                continue
            already = answer.status_code == 200
            if answer.event.queue_message_id == batch_id:
                members.append(item.id)
            results.append(
                {
                    "id": str(item.id),
                    "status": "ALREADY_REVERSED" if already else "ACCEPTED",
                    "queue_message_id": answer.event.queue_message_id,
                    "error": None,
                }
            )
        for batch_id, event_ids in batches:
            if event_ids:
                on_commit(session, functools.partial(publish_batch, batch_id, event_ids))
    REVERSALS_ACCEPTED.inc(sum(1 for r in results if r["status"] == "ACCEPTED"))
    return _json(202, results)


@router.post("/{event_id}/reverse", status_code=202, responses=docs.REVERSE_EVENT)
def reverse(
    event_id: uuid.UUID,
    body: ReverseIn,
    request: Request,
    who: CurrentBrand,
    # No control characters (NUL above all): PostgreSQL text cannot hold NUL.
    idempotency_key: Annotated[
        str | None, Header(max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
    ] = None,
) -> JSONResponse:
    fingerprint = hashlib.sha256(
        json.dumps([str(event_id), body.model_dump()], sort_keys=True).encode()
    ).hexdigest()
    with transaction(request) as session:
        if idempotency_key is not None:
            replay = _replay(session, who.brand_id, idempotency_key, fingerprint)
            if replay is not None:
                return replay
        answer = request_reversal(
            session,
            who.brand_id,
            event_id,
            body.reason,
            shortfall=body.shortfall,
            dry_run=body.dry_run,
        )
        view = answer.view if answer.view is not None else event_view(session, answer.event)
        if idempotency_key is not None and not body.dry_run:
            stored = IdempotencyKey(
                brand_id=who.brand_id,
                key=idempotency_key,
                request_hash=fingerprint,
                status_code=answer.status_code,
                response={"data": view},
            )
            try:
                with session.begin_nested():
                    session.add(stored)
            except IntegrityError:
                # A concurrent request with the same key committed first: answer as it did.
                replay = _replay(session, who.brand_id, idempotency_key, fingerprint)
                if replay is not None:
                    return replay
    if answer.status_code == 202:
        REVERSALS_ACCEPTED.inc()
    return _json(answer.status_code, view)


def _replay(
    session: Session, brand_id: uuid.UUID, key: str, fingerprint: str
) -> JSONResponse | None:
    stored = session.get(IdempotencyKey, (brand_id, key))
    if stored is None:
        return None
    if stored.request_hash != fingerprint:
        raise ApiError(
            409,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request body or event",
        )
    return JSONResponse(stored.response, status_code=stored.status_code)
