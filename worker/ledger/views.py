"""The event, wallet and transactions as the API shows them: the seed's shape and names."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, select, text
from sqlalchemy.orm import Session

from worker.ledger.wallet import LIVE_STATES
from worker.models import (
    Campaign,
    Event,
    Line,
    Reward,
    Transaction,
    Wallet,
)


def iso(moment: datetime | None) -> str | None:
    """UTC, ISO 8601 with `Z` (SPEC §3)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _id(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def line_view(line: Line, amount: int | None = None) -> dict[str, Any]:
    return {
        "amount": line.amount if amount is None else amount,
        "reward_id": str(line.reward_id),
        "campaign_id": _id(line.campaign_id),
        "brand_id": str(line.brand_id),
        "issued_at": iso(line.issued_at),
        "expiration_date": iso(line.expiration_date),
        "reservation_expires_at": iso(line.reservation_expires_at),
    }


def line_detail(line: Line) -> dict[str, Any]:
    """A line with the service's extensions: its id, what is left, its state."""
    return {
        "id": str(line.id),
        **line_view(line),
        "remaining": line.remaining,
        "reserved": line.reserved,
        "expired": line.expired,
        "state": line.state,
        "event_id": str(line.event_id),
    }


def transaction_view(
    tx: Transaction, line: Line | None, campaign_names: dict[uuid.UUID, str]
) -> dict[str, Any]:
    return {
        "id": str(tx.id),
        "brand_id": str(tx.brand_id),
        "event_id": str(tx.event_id),
        "campaign_id": _id(tx.campaign_id),
        "channel_id": _id(tx.channel_id),
        "store_id": _id(tx.store_id),
        "funded_by": tx.funded_by,
        "event_type": tx.event_type,
        "reward_type": tx.reward_type,
        "reward_id": str(tx.reward_id),
        "amount": tx.amount,
        "cost": _number(tx.cost),
        "details": tx.details,
        "type": tx.type,
        "receiver_id": str(tx.customer_id) if tx.amount >= 0 else None,
        "sender_id": str(tx.customer_id) if tx.amount < 0 else None,
        "created_at": iso(tx.created_at),
        "issued_at": iso(tx.issued_at),
        "attributes": {
            "line": line_view(line) if line is not None else None,
            "campaign_name": campaign_names.get(tx.campaign_id) if tx.campaign_id else None,
        },
        "metadata": tx.metadata_,
        "reverses_id": _id(tx.reverses_id),
    }


def campaign_names(session: Session, brand_id: uuid.UUID) -> dict[uuid.UUID, str]:
    rows = session.execute(select(Campaign.id, Campaign.name).where(Campaign.brand_id == brand_id))
    return dict(rows.all())


# Everything of some events' results, in one statement (one round trip), a row per
# event in the order given: each part is already the JSON the answer shows, built by
# PostgreSQL with the formats of iso(), line_view() and transaction_view() above. A
# list of 16 single requests spent two fifths of its CPU reading these parts as rows,
# parsing their timestamps and formatting them again (README, "Where the time
# goes"); tests/integration/test_views.py holds the views to those functions.


def _iso(column: str) -> str:
    """SQL: the timestamp as iso() writes it (UTC, `Z`, microseconds only if any)."""
    utc = f"({column} AT TIME ZONE 'UTC')"
    fraction = f"CASE WHEN extract(microseconds FROM {column})::bigint % 1000000 = 0 THEN ''"
    return (
        f"CASE WHEN {column} IS NULL THEN NULL ELSE to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
        f" || {fraction} ELSE to_char({utc}, '.US') END || 'Z' END"
    )


def _line(alias: str, amount: str | None = None) -> str:
    """SQL: line_view() of the line `alias`."""
    return (
        f"json_build_object('amount', {amount or alias + '.amount'},"
        f" 'reward_id', {alias}.reward_id, 'campaign_id', {alias}.campaign_id,"
        f" 'brand_id', {alias}.brand_id, 'issued_at', {_iso(alias + '.issued_at')},"
        f" 'expiration_date', {_iso(alias + '.expiration_date')},"
        f" 'reservation_expires_at', {_iso(alias + '.reservation_expires_at')})"
    )


_TRANSACTION = f"""json_build_object(
    'id', t.id, 'brand_id', t.brand_id, 'event_id', t.event_id,
    'campaign_id', t.campaign_id, 'channel_id', t.channel_id, 'store_id', t.store_id,
    'funded_by', t.funded_by, 'event_type', t.event_type, 'reward_type', t.reward_type,
    'reward_id', t.reward_id, 'amount', t.amount,
    'cost', CASE WHEN t.cost = trunc(t.cost) THEN to_json(trunc(t.cost)::bigint)
                 ELSE to_json(t.cost::float8) END,
    'details', t.details, 'type', t.type,
    'receiver_id', CASE WHEN t.amount >= 0 THEN t.customer_id END,
    'sender_id', CASE WHEN t.amount < 0 THEN t.customer_id END,
    'created_at', {_iso("t.created_at")}, 'issued_at', {_iso("t.issued_at")},
    'attributes', json_build_object(
        'line', CASE WHEN tl.id IS NULL THEN NULL ELSE {_line("tl")} END,
        'campaign_name', CASE WHEN t.campaign_id IS NULL THEN NULL ELSE c.name END),
    'metadata', t.metadata, 'reverses_id', t.reverses_id)"""

# Accumulations: by creation, and lines created together in the order they are stored
# (ctid), as the index on event_id returns them.
_EVENT_RESULTS = text(
    f"""
    SELECT
      (SELECT coalesce(json_agg(json_build_object(
                'code', g.code, 'reward_id', g.reward_id, 'customer_id', g.customer_id,
                'rewarded_at', {_iso("g.rewarded_at")}, 'description', g.description,
                'expired_at', {_iso("g.expired_at")}, 'redeemed_at', {_iso("g.redeemed_at")},
                'voided_at', {_iso("g.voided_at")}) ORDER BY g.rewarded_at), '[]')
         FROM gift_cards g WHERE g.event_id = e.id)::text,
      (SELECT coalesce(json_agg({_line("l")} ORDER BY l.created_at, l.ctid), '[]')
         FROM lines l WHERE l.event_id = e.id)::text,
      (SELECT coalesce(json_agg({_line("al", "a.amount")} ORDER BY r.id, a.id), '[]')
         FROM allocations a
         JOIN redemptions r ON r.id = a.redemption_id
         JOIN lines al ON al.id = a.line_id
        WHERE r.event_id = e.id)::text,
      (SELECT coalesce(json_agg({_TRANSACTION} ORDER BY t.seq), '[]')
         FROM transactions t
         LEFT JOIN campaigns c ON c.id = t.campaign_id AND c.brand_id = e.brand_id
         LEFT JOIN lines tl ON tl.id = t.line_id
        WHERE t.event_id = e.id)::text,
      (SELECT coalesce(json_agg(json_build_object(
                'customer_id', tc.customer_id, 'from_tier', tc.from_tier,
                'to_tier', tc.to_tier, 'at', {_iso("tc.at")}) ORDER BY tc.at), '[]')
         FROM tier_changes tc WHERE tc.event_id = e.id)::text
    FROM unnest(CAST(:event_ids AS uuid[]), CAST(:brand_ids AS uuid[]))
         WITH ORDINALITY AS e(id, brand_id, n)
    ORDER BY e.n
    """  # noqa: S608 - the f-string inserts this module's own SQL fragments, no input
)


def event_view(session: Session, event: Event) -> dict[str, Any]:
    """The seed's event object, plus brand_id, channel_id, store_id and `reversal`."""
    return event_views(session, [event])[0]


def event_views(session: Session, events: Sequence[Event | Row[Any]]) -> list[dict[str, Any]]:
    """`event_view` of each event, in order; their results read in one statement.

    An event may be given as its row of every column (worker.intake.request_reversals).
    """
    return [
        _event_view(event, map(json.loads, result))
        for event, result in zip(events, _results(session, events), strict=True)
    ]


def event_documents(session: Session, events: Sequence[Event | Row[Any]]) -> list[str]:
    """`event_views` as JSON text, each written once.

    The result's parts arrive from PostgreSQL as JSON already and go into the text as
    they came. Decoding them into a view, then encoding the whole view as the answer,
    was a tenth of the api's CPU per single reversal request (README, "Where the time
    goes"); tests/integration/test_views.py holds the two to the same JSON.
    """
    return [
        _event_document(event, result)
        for event, result in zip(events, _results(session, events), strict=True)
    ]


def _results(session: Session, events: Sequence[Event | Row[Any]]) -> Sequence[Row[Any]]:
    if not events:
        return []
    session.flush()  # a textual statement does not autoflush; the ORM's queries did
    return session.execute(
        _EVENT_RESULTS,
        {"event_ids": [e.id for e in events], "brand_ids": [e.brand_id for e in events]},
    ).all()


# The result's parts, in _EVENT_RESULTS' order of columns.
_PARTS = ("gift_card", "accumulations", "redemptions", "transactions", "customer_by_tier")
# As Starlette's JSONResponse writes its content.
_dumps = functools.partial(json.dumps, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _event_view(event: Event | Row[Any], parts: Iterable[Any]) -> dict[str, Any]:
    head, known, tail = _fields(event)
    return {**head, "result": {**known, **dict(zip(_PARTS, parts, strict=True))}, **tail}


def _event_document(event: Event | Row[Any], parts: Sequence[str]) -> str:
    head, known, tail = _fields(event)
    spliced = ",".join(f'"{name}":{part}' for name, part in zip(_PARTS, parts, strict=True))
    # Each dumps() is an object: "{...}" joined with the next, its braces shared.
    result = f"{_dumps(known)[:-1]},{spliced}}}"
    return f'{_dumps(head)[:-1]},"result":{result},{_dumps(tail)[1:]}'


def _fields(
    event: Event | Row[Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The event's own fields before its result, the result's own, and those after."""
    head = {
        "id": str(event.id),
        "customer_id": str(event.customer_id),
        "type": event.type,
        "data": event.data,
        "fulfilled": event.fulfilled,
        "reserve": event.reserve,
        "queue_message_id": event.queue_message_id,
        "rewarding_campaigns": event.rewarding_campaigns,
        "status": event.status,
    }
    known = {
        "wallet": event.result_wallet or {},
        "customer": event.result_customer or {"id": str(event.customer_id)},
    }
    tail = {
        "issued_at": iso(event.issued_at),
        "processing_at": iso(event.processing_at),
        "resolved_at": iso(event.resolved_at),
        "cancelled_at": iso(event.cancelled_at),
        "expired_at": iso(event.expired_at),
        "reversed_at": iso(event.reversed_at),
        "brand_id": str(event.brand_id),
        "channel_id": _id(event.channel_id),
        "store_id": _id(event.store_id),
        "error": event.error,
        "reversal": reversal_view(event),
    }
    return head, known, tail


def reversal_view(event: Event | Row[Any]) -> dict[str, Any] | None:
    if event.reversal_requested_at is None:
        return None
    return {
        "reason": event.reversal_reason,
        "requested_at": iso(event.reversal_requested_at),
        "status": event.reversal_status,
        "attempts": event.reversal_attempts,
        "last_error": event.reversal_last_error,
        "dead_lettered": event.reversal_dead_lettered,
        "shortfall": event.reversal_shortfall,
    }


def wallet_view(session: Session, customer_id: uuid.UUID) -> dict[str, Any]:
    rewards = {
        r.id: r
        for r in session.scalars(
            select(Reward)
            .join(Wallet, Wallet.reward_id == Reward.id)
            .where(Wallet.customer_id == customer_id)
        )
    }
    wallets = session.scalars(
        select(Wallet).where(Wallet.customer_id == customer_id).order_by(Wallet.reward_id)
    ).all()
    lines = session.scalars(
        select(Line)
        .where(
            Line.customer_id == customer_id,
            Line.state.in_(LIVE_STATES),
            Line.remaining != 0,
        )
        .order_by(Line.expiration_date.asc().nulls_last(), Line.issued_at)
    ).all()
    return {
        "customer_id": str(customer_id),
        "balances": [
            {
                "reward_id": str(w.reward_id),
                "reward_type": rewards[w.reward_id].type,
                "reward_name": rewards[w.reward_id].name,
                "balance": w.balance,
            }
            for w in wallets
        ],
        "lines": [line_detail(line) for line in lines],
    }
