"""Behavior events: record, read, reverse (single and bulk)."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic_core import to_jsonable_python
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_stub import responses as docs
from api_stub.auth import Principal
from api_stub.coalesce import Coalescer
from api_stub.deps import CurrentBrand, transaction
from api_stub.errors import ApiError
from api_stub.metrics import REVERSALS_ACCEPTED
from api_stub.schemas import BulkReverseIn, EventIn, ReverseIn
from worker.db import unit_of_work
from worker.intake import (
    Decided,
    IntakeError,
    ReversalRequest,
    create_event,
    fulfil_event,
    get_event,
    request_reversal,
    request_reversals,
)
from worker.ledger.views import event_documents, event_view
from worker.models import IdempotencyKey
from worker.settings import get_settings

router = APIRouter(prefix="/behavior/events")


def _json(status: int, data: Any) -> JSONResponse:
    return JSONResponse({"data": data}, status_code=status)


def _json_document(status: int, document: str) -> Response:
    """`_json` of data already written as JSON text."""
    body = f'{{"data":{document}}}'.encode()
    return Response(body, status_code=status, media_type="application/json")


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
    # Accepted events travel in batches of BULK_BATCH_SIZE, one message each: the
    # per-message cost is paid once per batch, and batches spread over the workers.
    requests = [
        ReversalRequest(who.brand_id, item.id, item.reason, body.shortfall) for item in body.events
    ]
    with transaction(request) as session:
        answers = request_reversals(session, requests, get_settings().bulk_batch_size)
        results = [_bulk_result(r.event_id, a) for r, a in zip(requests, answers, strict=True)]
    REVERSALS_ACCEPTED.inc(sum(1 for r in results if r["status"] == "ACCEPTED"))
    return _json(202, results)


def _bulk_result(event_id: uuid.UUID, answer: Decided | IntakeError) -> dict[str, Any]:
    if isinstance(answer, IntakeError):
        return {
            "id": str(event_id),
            "status": "REJECTED",
            "queue_message_id": None,
            "error": {"code": answer.code, "message": answer.message},
        }
    return {
        "id": str(event_id),
        "status": "ALREADY_REVERSED" if answer.status_code == 200 else "ACCEPTED",
        "queue_message_id": answer.queue_message_id,
        "error": None,
    }


@router.post("/{event_id}/reverse", status_code=202, responses=docs.REVERSE_EVENT)
async def reverse(
    event_id: uuid.UUID,
    body: ReverseIn,
    request: Request,
    who: CurrentBrand,
    # No control characters (NUL above all): PostgreSQL text cannot hold NUL.
    idempotency_key: Annotated[
        str | None, Header(max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
    ] = None,
) -> Response:
    if idempotency_key is not None or body.dry_run:
        # A stored answer to replay, or a reversal worked out and thrown away: alone.
        return await run_in_threadpool(
            _reverse_alone, event_id, body, request, who, idempotency_key
        )
    status, document = await singles_of(request).submit(
        ReversalRequest(who.brand_id, event_id, body.reason, body.shortfall)
    )
    if status == 202:
        REVERSALS_ACCEPTED.inc()
    return _json_document(status, document)


Single = tuple[int, str]  # a single request's status and event view, as JSON text


def singles_of(request: Request) -> Coalescer[ReversalRequest, Single]:
    """The app's coalescer of single reversal requests, made on first use."""
    state = request.app.state
    singles: Coalescer[ReversalRequest, Single] | None = getattr(state, "singles", None)
    if singles is None:
        factory: Callable[[], Session] = state.session_factory
        size = get_settings().bulk_batch_size
        singles = state.singles = Coalescer(functools.partial(decide_singles, factory, size), size)
    return singles


def decide_singles(
    factory: Callable[[], Session], batch_size: int, requests: list[ReversalRequest]
) -> list[Single | Exception]:
    """Single requests that arrived together, decided in one transaction (api_stub.coalesce).

    Each answers as if alone: its 202 or 200 with the event (as JSON text), or its
    IntakeError. The accepted events travel in batch messages, as a bulk request's
    do. Should the transaction fail (the database gone, say), each request is tried
    again alone, in its own transaction, so that one request's failure is never
    another's.
    """
    try:
        with unit_of_work(factory) as session:
            answers = request_reversals(session, requests, batch_size, views=True)
            # One view per event, found by id: an event named twice shows the same.
            rows = {
                a.event_id: a.event
                for a in answers
                if isinstance(a, Decided) and a.event is not None
            }
            views = dict(zip(rows, event_documents(session, list(rows.values())), strict=True))
            return [
                a if isinstance(a, IntakeError) else (a.status_code, views[a.event_id])
                for a in answers
            ]
    except Exception as exc:
        if len(requests) == 1:
            return [exc]
        return [decide_singles(factory, batch_size, [one])[0] for one in requests]


def _reverse_alone(
    event_id: uuid.UUID,
    body: ReverseIn,
    request: Request,
    who: Principal,
    idempotency_key: str | None,
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
