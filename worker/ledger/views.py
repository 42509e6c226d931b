"""The event, wallet and transactions as the API shows them: the seed's shape and names."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Row, select, text
from sqlalchemy.orm import Session

from worker.ledger.wallet import LIVE_STATES
from worker.models import (
    Campaign,
    Event,
    GiftCard,
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


def gift_card_view(card: GiftCard) -> dict[str, Any]:
    return {
        "code": card.code,
        "reward_id": str(card.reward_id),
        "customer_id": str(card.customer_id),
        "rewarded_at": iso(card.rewarded_at),
        "description": card.description,
        "expired_at": iso(card.expired_at),
        "redeemed_at": iso(card.redeemed_at),
        "voided_at": iso(card.voided_at),
    }


def campaign_names(session: Session, brand_id: uuid.UUID) -> dict[uuid.UUID, str]:
    rows = session.execute(select(Campaign.id, Campaign.name).where(Campaign.brand_id == brand_id))
    return dict(rows.all())


# Everything of some events' results, in one statement (one round trip), a row per
# event in the order given: each part is the table's own rows as JSON, so the Python
# below formats them with the same functions as the ORM objects elsewhere
# (line_view, transaction_view, ...). A transaction carries its line and its
# campaign's name; a redemption's allocation its line. `cost` comes as text, to be
# read as the Decimal the ORM would give. `json`, not `jsonb`: PostgreSQL builds it
# as text, in a third of the time, and the Python reads it the same.
_EVENT_RESULTS = text(
    """
    SELECT
      (SELECT coalesce(json_agg(l), '[]') FROM lines l WHERE l.event_id = e.id)::text,
      (SELECT coalesce(json_agg(json_build_object(
                'row', t, 'cost', t.cost::text, 'campaign_name', c.name, 'line', tl)
                ORDER BY t.seq), '[]')
         FROM transactions t
         LEFT JOIN campaigns c ON c.id = t.campaign_id AND c.brand_id = e.brand_id
         LEFT JOIN lines tl ON tl.id = t.line_id
        WHERE t.event_id = e.id)::text,
      (SELECT coalesce(json_agg(json_build_object('amount', a.amount, 'line', al)
                ORDER BY r.id, a.id), '[]')
         FROM allocations a
         JOIN redemptions r ON r.id = a.redemption_id
         JOIN lines al ON al.id = a.line_id
        WHERE r.event_id = e.id)::text,
      (SELECT coalesce(json_agg(g ORDER BY g.rewarded_at), '[]')
         FROM gift_cards g WHERE g.event_id = e.id)::text,
      (SELECT coalesce(json_agg(tc ORDER BY tc.at), '[]')
         FROM tier_changes tc WHERE tc.event_id = e.id)::text
    FROM unnest(CAST(:event_ids AS uuid[]), CAST(:brand_ids AS uuid[]))
         WITH ORDINALITY AS e(id, brand_id, n)
    ORDER BY e.n
    """
)
_LINE_TIMES = ("issued_at", "expiration_date", "reservation_expires_at", "created_at")
_CARD_TIMES = ("rewarded_at", "expired_at", "redeemed_at", "voided_at")


def _moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _row(values: dict[str, Any], times: tuple[str, ...]) -> Any:
    """A row read as JSON, with its timestamps as the datetimes the ORM would give.

    It has the attributes of the model's instance, which is all the views read.
    """
    for name in times:
        values[name] = _moment(values[name])
    return SimpleNamespace(**values)


def event_view(session: Session, event: Event) -> dict[str, Any]:
    """The seed's event object, plus brand_id, channel_id, store_id and `reversal`."""
    return event_views(session, [event])[0]


def event_views(session: Session, events: Sequence[Event | Row[Any]]) -> list[dict[str, Any]]:
    """`event_view` of each event, in order; their results read in one statement.

    An event may be given as its row of every column (worker.intake.request_reversals).
    """
    if not events:
        return []
    session.flush()  # a textual statement does not autoflush; the ORM's queries did
    results = session.execute(
        _EVENT_RESULTS,
        {"event_ids": [e.id for e in events], "brand_ids": [e.brand_id for e in events]},
    )
    return [_event_view(event, result) for event, result in zip(events, results, strict=True)]


def _event_view(event: Event | Row[Any], result: Sequence[str]) -> dict[str, Any]:
    lines_json, txs_json, allocations_json, cards_json, tiers_json = result
    lines = [_row(line, _LINE_TIMES) for line in json.loads(lines_json)]
    redemptions = [
        line_view(_row(a["line"], _LINE_TIMES), a["amount"]) for a in json.loads(allocations_json)
    ]
    transactions = []
    names: dict[Any, str] = {}
    for found in json.loads(txs_json):
        values = found["row"]
        values["metadata_"] = values.pop("metadata")
        values["cost"] = Decimal(found["cost"])
        if values["campaign_id"] is not None and found["campaign_name"] is not None:
            names[values["campaign_id"]] = found["campaign_name"]
        tx = _row(values, ("created_at", "issued_at"))
        line_row = _row(found["line"], _LINE_TIMES) if found["line"] is not None else None
        transactions.append(transaction_view(tx, line_row, names))
    cards = [_row(card, _CARD_TIMES) for card in json.loads(cards_json)]
    tiers = [_row(change, ("at",)) for change in json.loads(tiers_json)]
    return {
        "id": str(event.id),
        "customer_id": str(event.customer_id),
        "type": event.type,
        "data": event.data,
        "fulfilled": event.fulfilled,
        "reserve": event.reserve,
        "queue_message_id": event.queue_message_id,
        "rewarding_campaigns": event.rewarding_campaigns,
        "status": event.status,
        "result": {
            "wallet": event.result_wallet or {},
            "customer": event.result_customer or {"id": str(event.customer_id)},
            "gift_card": [gift_card_view(card) for card in cards],
            "accumulations": [
                line_view(line) for line in sorted(lines, key=lambda x: x.created_at)
            ],
            "redemptions": redemptions,
            "transactions": transactions,
            "customer_by_tier": [
                {
                    "customer_id": str(change.customer_id),
                    "from_tier": change.from_tier,
                    "to_tier": change.to_tier,
                    "at": iso(change.at),
                }
                for change in tiers
            ],
        },
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
