"""Primitives shared by recording and reversing: locks, transactions, debts, expiry, tiers.

Lock order (so that concurrent work on one customer cannot deadlock): the event
row first, then the customer's wallet rows in reward-id order, then lines. Every
write to a customer's lines or transactions of a reward holds that wallet row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from worker.ledger.errors import InconsistentLedger
from worker.models import (
    Brand,
    Campaign,
    Customer,
    Event,
    Line,
    LineState,
    Reward,
    RewardType,
    Settlement,
    TierChange,
    Transaction,
    TransactionType,
    Wallet,
)

LIVE_STATES = (LineState.ACTIVE.value, LineState.EXPIRED.value, LineState.REVERSED.value)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    """What one ledger operation needs to write transactions for an event."""

    session: Session
    event: Event
    rewards: dict[uuid.UUID, Reward]
    campaigns: dict[uuid.UUID, Campaign]
    wallets: dict[uuid.UUID, Wallet]
    now: datetime

    def write(
        self,
        line: Line,
        type_: TransactionType,
        amount: int,
        *,
        reverses: uuid.UUID | None = None,
        details: str | None = None,
    ) -> Transaction:
        """Append a transaction for `line` and move the wallet balance by `amount`."""
        reward = self.rewards[line.reward_id]
        campaign = self.campaigns.get(line.campaign_id) if line.campaign_id else None
        tx = Transaction(
            id=uuid.uuid4(),
            brand_id=self.event.brand_id,
            customer_id=line.customer_id,
            event_id=self.event.id,
            line_id=line.id,
            reward_id=line.reward_id,
            campaign_id=line.campaign_id,
            channel_id=self.event.channel_id,
            store_id=self.event.store_id,
            type=type_.value,
            amount=amount,
            cost=reward.cost * abs(amount),
            details=details,
            funded_by=campaign.funded_by if campaign else None,
            event_type=self.event.type,
            reward_type=reward.type,
            reverses_id=reverses,
            issued_at=self.event.issued_at,
            created_at=self.now,
        )
        self.session.add(tx)
        self.wallets[line.reward_id].balance += amount
        return tx


def load_context(
    session: Session, event: Event, reward_ids: Iterable[uuid.UUID], now: datetime | None = None
) -> Context:
    """Lock the customer's wallets of these rewards (creating them) and load references."""
    ids = sorted(set(reward_ids))
    rewards = {
        r.id: r
        for r in session.scalars(
            select(Reward).where(Reward.id.in_(ids), Reward.brand_id == event.brand_id)
        )
    }
    missing = [str(i) for i in ids if i not in rewards]
    if missing:
        raise InconsistentLedger(f"unknown reward(s) for this brand: {', '.join(missing)}")
    campaigns = {
        c.id: c
        for c in session.scalars(select(Campaign).where(Campaign.brand_id == event.brand_id))
    }
    wallets = lock_wallets(session, event.brand_id, event.customer_id, ids)
    return Context(session, event, rewards, campaigns, wallets, now or utcnow())


def lock_wallets(
    session: Session, brand_id: uuid.UUID, customer_id: uuid.UUID, reward_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Wallet]:
    if not reward_ids:
        return {}
    session.execute(
        insert(Wallet)
        .values(
            [
                {"customer_id": customer_id, "reward_id": r, "brand_id": brand_id, "balance": 0}
                for r in reward_ids
            ]
        )
        .on_conflict_do_nothing()
    )
    rows = session.scalars(
        select(Wallet)
        .where(Wallet.customer_id == customer_id, Wallet.reward_id.in_(reward_ids))
        .order_by(Wallet.reward_id)
        .with_for_update()
    ).all()
    return {w.reward_id: w for w in rows}


def is_past(moment: datetime | None, now: datetime) -> bool:
    return moment is not None and moment <= now


def expire_now(ctx: Context, line: Line, origin: str) -> None:
    """Expire what is live on a line whose expiration date has passed."""
    live = line.remaining - line.reserved
    if live <= 0:
        return
    ctx.write(line, TransactionType.EXPIRATION, -live, details=origin)
    line.remaining -= live
    line.expired += live
    if line.state == LineState.ACTIVE:
        line.state = LineState.EXPIRED.value


def return_points(ctx: Context, line: Line, amount: int) -> None:
    """Give `amount` back to `line`, as a returned redemption does (SPEC §6.2).

    Points that paid this line's debt are given back to the lines that paid it
    first, newest settlement first; what is left lands on the line with its own
    expiration date, and is expired again at once if that date has passed. The
    caller has written the REVERSAL transaction for the whole amount.
    """
    settlements = ctx.session.scalars(
        select(Settlement)
        .where(Settlement.debtor_line_id == line.id, Settlement.amount > 0)
        .order_by(Settlement.seq.desc())
    ).all()
    for settlement in settlements:
        if amount <= 0:
            break
        back = min(amount, settlement.amount)
        creditor = ctx.session.get_one(Line, settlement.creditor_line_id)
        settlement.amount -= back
        amount -= back
        # The creditor's points move back without a transaction (the balance is
        # unchanged), and the same way: through its own settlements, then its date.
        return_points(ctx, creditor, back)
    line.remaining += amount
    if line.remaining > line.amount:
        raise InconsistentLedger(f"line {line.id} would hold more than it was issued")
    if is_past(line.expiration_date, ctx.now):
        expire_now(ctx, line, "returned to a line that has expired")


def settle_debts(ctx: Context, reward_id: uuid.UUID) -> None:
    """Pay the customer's debt lines of a reward from its live points, soonest expiry first."""
    debtors = ctx.session.scalars(
        select(Line)
        .where(
            Line.customer_id == ctx.event.customer_id,
            Line.reward_id == reward_id,
            Line.state.in_(LIVE_STATES),
            Line.remaining < 0,
        )
        .order_by(Line.issued_at, Line.id)
    ).all()
    if not debtors:
        return
    creditors = spendable_lines(ctx, reward_id)
    for debtor in debtors:
        for creditor in creditors:
            if debtor.remaining >= 0:
                break
            pay = min(-debtor.remaining, creditor.remaining - creditor.reserved)
            if pay <= 0:
                continue
            creditor.remaining -= pay
            debtor.remaining += pay
            ctx.session.add(
                Settlement(debtor_line_id=debtor.id, creditor_line_id=creditor.id, amount=pay)
            )


def spendable_lines(ctx: Context, reward_id: uuid.UUID) -> list[Line]:
    """Live lines with unreserved points not past their date: soonest expiry first."""
    return list(
        ctx.session.scalars(
            select(Line)
            .where(
                Line.customer_id == ctx.event.customer_id,
                Line.reward_id == reward_id,
                Line.state.in_(LIVE_STATES),
                Line.remaining - Line.reserved > 0,
                (Line.expiration_date.is_(None)) | (Line.expiration_date > ctx.now),
            )
            .order_by(Line.expiration_date.asc().nulls_last(), Line.issued_at, Line.id)
        )
    )


def balances(session: Session, customer_id: uuid.UUID) -> dict[str, int]:
    rows = session.execute(
        select(Wallet.reward_id, Wallet.balance)
        .where(Wallet.customer_id == customer_id)
        .order_by(Wallet.reward_id)
    )
    return {str(reward_id): balance for reward_id, balance in rows}


def recompute_tier(ctx: Context) -> None:
    """Place the customer in the brand's tier table by their POINTS balance (SPEC §6.4)."""
    session = ctx.session
    brand = session.get_one(Brand, ctx.event.brand_id)
    tiers: list[dict[str, Any]] = list(brand.settings.get("tiers") or [])
    customer = session.get_one(Customer, ctx.event.customer_id, with_for_update=True)
    points = sum(
        session.scalars(
            select(Wallet.balance)
            .join(Reward, Reward.id == Wallet.reward_id)
            .where(Wallet.customer_id == customer.id, Reward.type == RewardType.POINTS.value)
        )
    )
    reached = [t for t in tiers if points >= int(t["min_points"])]
    new_tier = max(reached, key=lambda t: int(t["min_points"]))["name"] if reached else None
    if new_tier != customer.tier:
        session.add(
            TierChange(
                brand_id=ctx.event.brand_id,
                customer_id=customer.id,
                event_id=ctx.event.id,
                from_tier=customer.tier,
                to_tier=new_tier,
                at=ctx.now,
            )
        )
        customer.tier = new_tier


def snapshot(ctx: Context) -> None:
    """Keep the wallet and customer as they stand after this operation on the event."""
    session = ctx.session
    session.flush()
    customer = session.get_one(Customer, ctx.event.customer_id)
    ctx.event.result_wallet = balances(session, customer.id)
    ctx.event.result_customer = {"id": str(customer.id), "tier": customer.tier}


def touch(session: Session, event_id: uuid.UUID) -> None:
    session.execute(update(Event).where(Event.id == event_id).values(updated_at=utcnow()))
