"""The event, wallet and transactions as the API shows them: the seed's shape and names."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.ledger.wallet import LIVE_STATES
from worker.models import (
    Allocation,
    Campaign,
    Event,
    GiftCard,
    Line,
    Redemption,
    Reward,
    TierChange,
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


def event_view(session: Session, event: Event) -> dict[str, Any]:
    """The seed's event object, plus brand_id, channel_id, store_id and `reversal`."""
    lines = {
        line.id: line for line in session.scalars(select(Line).where(Line.event_id == event.id))
    }
    txs = list(
        session.scalars(
            select(Transaction).where(Transaction.event_id == event.id).order_by(Transaction.seq)
        )
    )
    missing = {tx.line_id for tx in txs if tx.line_id and tx.line_id not in lines}
    allocations: list[tuple[Allocation, Line]] = [
        (allocation, line)
        for allocation, line in session.execute(
            select(Allocation, Line)
            .join(Redemption, Redemption.id == Allocation.redemption_id)
            .join(Line, Line.id == Allocation.line_id)
            .where(Redemption.event_id == event.id)
            .order_by(Redemption.id, Allocation.id)
        )
    ]
    other_lines = {line.id: line for _, line in allocations}
    if missing - other_lines.keys():
        for line in session.scalars(select(Line).where(Line.id.in_(missing))):
            other_lines[line.id] = line
    all_lines = {**other_lines, **lines}
    names = campaign_names(session, event.brand_id)
    cards = session.scalars(
        select(GiftCard).where(GiftCard.event_id == event.id).order_by(GiftCard.rewarded_at)
    )
    tiers = session.scalars(
        select(TierChange).where(TierChange.event_id == event.id).order_by(TierChange.at)
    )
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
                line_view(line) for line in sorted(lines.values(), key=lambda x: x.created_at)
            ],
            "redemptions": [line_view(line, a.amount) for a, line in allocations],
            "transactions": [
                transaction_view(tx, all_lines.get(tx.line_id) if tx.line_id else None, names)
                for tx in txs
            ],
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


def reversal_view(event: Event) -> dict[str, Any] | None:
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
