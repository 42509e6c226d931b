"""Recording an event whose outcome was decided upstream (SPEC §4, POST /behavior/events).

Accumulations create lines; redemptions take from the customer's spendable lines
of that reward, soonest expiry first, and record exactly which lines gave how much.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from worker.ledger.errors import InsufficientBalance
from worker.ledger.wallet import (
    Context,
    load_context,
    recompute_tier,
    settle_debts,
    snapshot,
    spendable_lines,
)
from worker.models import (
    Allocation,
    Event,
    EventStatus,
    GiftCard,
    Line,
    LineState,
    Redemption,
    TransactionType,
)


def _uuid(value: Any) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value else None


def _dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def record_event(session: Session, event: Event, now: datetime | None = None) -> None:
    """Apply a PENDING event's accumulations, redemptions and gift cards; RESOLVED.

    Raises a LedgerError (for instance InsufficientBalance) and leaves the caller
    to roll back: nothing of a refused event is kept.
    """
    request = event.request
    accumulate: list[dict[str, Any]] = request.get("accumulate", [])
    redeem: list[dict[str, Any]] = request.get("redeem", [])
    reward_ids = {uuid.UUID(i["reward_id"]) for i in accumulate + redeem}
    reward_ids |= {uuid.UUID(g["reward_id"]) for g in request.get("gift_cards", [])}
    ctx = load_context(session, event, reward_ids, now)
    if not event.fulfilled and event.reserve:
        event.reservation_expires_at = ctx.now + timedelta(days=event.reserve)

    for item in accumulate:
        _accumulate(ctx, item)
    for item in redeem:
        _redeem(ctx, item)
    for item in request.get("gift_cards", []):
        session.add(
            GiftCard(
                code=item.get("code") or secrets.token_hex(8).upper(),
                brand_id=event.brand_id,
                customer_id=event.customer_id,
                reward_id=uuid.UUID(item["reward_id"]),
                event_id=event.id,
                description=item.get("description"),
                rewarded_at=ctx.now,
                expired_at=_dt(item.get("expired_at")),
            )
        )
    settle_debts(ctx, reward_ids)
    recompute_tier(ctx)
    event.status = EventStatus.RESOLVED.value
    event.resolved_at = ctx.now
    event.error = None
    snapshot(ctx)


def _accumulate(ctx: Context, item: dict[str, Any]) -> None:
    event = ctx.event
    pending = not event.fulfilled
    line = Line(
        id=uuid.uuid4(),
        brand_id=event.brand_id,
        customer_id=event.customer_id,
        reward_id=uuid.UUID(item["reward_id"]),
        campaign_id=_uuid(item.get("campaign_id")),
        event_id=event.id,
        amount=int(item["amount"]),
        remaining=int(item["amount"]),
        state=(LineState.PENDING if pending else LineState.ACTIVE).value,
        issued_at=event.issued_at,
        expiration_date=_dt(item.get("expiration_date")),
        reservation_expires_at=event.reservation_expires_at if pending else None,
    )
    ctx.session.add(line)
    if not pending:
        ctx.session.flush()
        ctx.write(line, TransactionType.ACCUMULATION, line.amount)


def _redeem(ctx: Context, item: dict[str, Any]) -> None:
    event = ctx.event
    reward_id = uuid.UUID(item["reward_id"])
    amount = int(item["amount"])
    ctx.session.flush()
    lines = spendable_lines(ctx, reward_id)
    available = sum(line.remaining - line.reserved for line in lines)
    if available < amount:
        raise InsufficientBalance(
            f"not enough balance to redeem {amount} of reward {reward_id}: {available} available"
        )
    held = not event.fulfilled
    redemption = Redemption(
        id=uuid.uuid4(),
        event_id=event.id,
        customer_id=event.customer_id,
        reward_id=reward_id,
        campaign_id=_uuid(item.get("campaign_id")),
        amount=amount,
        held=held,
    )
    ctx.session.add(redemption)
    ctx.session.flush()
    left = amount
    allocations = []
    for line in lines:
        if left == 0:
            break
        take = min(left, line.remaining - line.reserved)
        left -= take
        allocation = Allocation(redemption_id=redemption.id, line_id=line.id, amount=take)
        if held:
            line.reserved += take
        else:
            line.remaining -= take
            allocation.transaction_id = ctx.write(line, TransactionType.REDEMPTION, -take)
        allocations.append(allocation)
    # Allocations point at their transactions: those rows must exist first.
    ctx.session.flush()
    ctx.session.add_all(allocations)
