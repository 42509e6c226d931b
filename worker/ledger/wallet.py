"""Primitives shared by recording and reversing: locks, transactions, debts, expiry, tiers.

Lock order (so that concurrent work on one customer cannot deadlock): the event
row first, then the customer's wallet rows in reward-id order with the customer's
row (for the tier), then lines. Every write to a customer's lines or transactions
of a reward holds that wallet row.

An operation locks all of the customer's wallets at once (a customer has a
handful): the locked rows are then the wallet as it stands, so the tier and the
snapshot are computed from them in memory instead of being read back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from worker.ledger import journal
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
    TransactionType,
    Wallet,
    one_of,
)

LIVE_STATES = (LineState.ACTIVE.value, LineState.EXPIRED.value, LineState.REVERSED.value)


# The statements of every operation, built once, their parameters named in
# bindparam(): building a statement on every call was a third of a reversal's CPU
# (the compiled form was cached anyway). Parameter names must not be column names:
# in an UPDATE, such a key would become one more SET.
_SETTLEMENTS = (
    select(Settlement)
    .where(
        one_of(Settlement.debtor_line_id, "line_ids"),
        Settlement.amount > 0,
    )
    .order_by(Settlement.seq.desc())
)
# The customer's row (for the tier) is locked with its wallets, FOR NO KEY UPDATE:
# enough to serialise operations on the customer, and it does not block the
# key-share lock that inserting a row referring to the customer (an event, a line)
# takes meanwhile.
# Several customers (a bulk batch) are locked in customer order, the same order in
# every batch, so that two batches cannot wait on each other.
_WALLETS = (
    select(Wallet, Reward, Customer)
    .join(Reward, Reward.id == Wallet.reward_id)
    .join(Customer, Customer.id == Wallet.customer_id)
    .where(one_of(Wallet.customer_id, "customer_ids"))
    .order_by(Wallet.customer_id, Wallet.reward_id)
    .with_for_update(of=[Wallet, Customer], key_share=True)
)
_CUSTOMERS = (
    select(Customer)
    .where(one_of(Customer.id, "customer_ids"))
    .order_by(Customer.id)
    .with_for_update(key_share=True)
)
_DEBTORS = (
    select(Line)
    .where(
        Line.customer_id == bindparam("customer_id"),
        one_of(Line.reward_id, "reward_ids"),
        Line.state.in_(LIVE_STATES),
        Line.remaining < 0,
    )
    .order_by(Line.reward_id, Line.issued_at, Line.id)
)
# The lines in debt of customers whose wallets are locked, read once before a
# reversal writes (see Debts).
_IN_DEBT = select(Line).where(
    one_of(Line.customer_id, "customer_ids"),
    Line.state.in_(LIVE_STATES),
    Line.remaining < 0,
)
_SPENDABLE = (
    select(Line)
    .where(
        Line.customer_id == bindparam("customer_id"),
        Line.reward_id == bindparam("reward_id"),
        Line.state.in_(LIVE_STATES),
        Line.remaining - Line.reserved > 0,
        (Line.expiration_date.is_(None)) | (Line.expiration_date > bindparam("now")),
    )
    .order_by(Line.expiration_date.asc().nulls_last(), Line.issued_at, Line.id)
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Holdings:
    """One customer's row and all of their wallets (with their rewards), locked."""

    customer: Customer
    wallets: dict[uuid.UUID, Wallet] = field(default_factory=dict)  # by reward id
    rewards: dict[uuid.UUID, Reward] = field(default_factory=dict)


def lock_customers(
    session: Session, customer_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, Holdings]:
    """Lock these customers' wallets with their rows, in customer order; a customer
    without wallets yet is locked alone."""
    ids = sorted(set(customer_ids))
    held: dict[uuid.UUID, Holdings] = {}
    for wallet, reward, customer in session.execute(_WALLETS, {"customer_ids": ids}):
        holdings = held.setdefault(customer.id, Holdings(customer))
        holdings.wallets[wallet.reward_id] = wallet
        holdings.rewards[reward.id] = reward
    alone = [i for i in ids if i not in held]
    if alone:
        for customer in session.scalars(_CUSTOMERS, {"customer_ids": alone}):
            held[customer.id] = Holdings(customer)
    missing = [str(i) for i in ids if i not in held]
    if missing:
        raise InconsistentLedger(f"unknown customer(s): {', '.join(missing)}")
    return held


def load_settlements(
    session: Session, into: dict[uuid.UUID, list[Settlement]], line_ids: Iterable[uuid.UUID]
) -> None:
    """Read ahead, in one query, the live settlements of these debtor lines, newest first."""
    ids = set(line_ids) - set(into)
    if not ids:
        return
    for line_id in ids:
        into[line_id] = []
    for settlement in session.scalars(_SETTLEMENTS, {"line_ids": list(ids)}):
        into[settlement.debtor_line_id].append(settlement)


@dataclass
class Debts:
    """The lines that can be in debt while one transaction holds their customers' wallets.

    Those in debt when the wallets were locked, and those the transaction may take
    below zero (a reversal's own lines): holding the wallets, no one else writes
    these customers' lines meanwhile, so the debts are known in memory, and a
    reversal's writes need not be flushed to look for them.
    """

    # By customer, then by line id.
    lines: dict[uuid.UUID, dict[uuid.UUID, Line]] = field(default_factory=dict)

    @classmethod
    def read(cls, session: Session, customer_ids: Iterable[uuid.UUID]) -> Debts:
        debts = cls()
        debts.watch(session.scalars(_IN_DEBT, {"customer_ids": sorted(set(customer_ids))}))
        return debts

    def watch(self, lines: Iterable[Line]) -> None:
        for line in lines:
            self.lines.setdefault(line.customer_id, {})[line.id] = line

    def of(self, customer_id: uuid.UUID, reward_ids: Iterable[uuid.UUID]) -> list[Line]:
        """As _DEBTORS would find them: in reward order, oldest first."""
        rewards = set(reward_ids)
        return sorted(
            (
                line
                for line in self.lines.get(customer_id, {}).values()
                if line.reward_id in rewards and line.state in LIVE_STATES and line.remaining < 0
            ),
            key=lambda line: (line.reward_id, line.issued_at, line.id),
        )


@dataclass
class Context:
    """What one ledger operation needs to write transactions for an event."""

    session: Session
    event: Event
    rewards: dict[uuid.UUID, Reward]  # of every wallet below
    wallets: dict[uuid.UUID, Wallet]  # all of the customer's, locked, by reward id
    # Locked with the wallets, and held here: the session's identity map keeps only
    # referenced objects, and would read it again.
    customer: Customer
    now: datetime
    campaigns: dict[uuid.UUID, Campaign] = field(default_factory=dict)
    # Settlements by debtor line, newest first, for lines whose were read ahead.
    settlements: dict[uuid.UUID, list[Settlement]] = field(default_factory=dict)
    # Known in memory when read ahead (a reversal); otherwise looked for after the writes.
    debts: Debts | None = None

    def campaign(self, campaign_id: uuid.UUID | None) -> Campaign | None:
        if campaign_id is None:
            return None
        if campaign_id not in self.campaigns:
            self.campaigns[campaign_id] = self.session.get_one(Campaign, campaign_id)
        return self.campaigns[campaign_id]

    def settlements_of(self, line_id: uuid.UUID) -> list[Settlement]:
        """The settlements that paid this line's debt and still hold points, newest first."""
        if line_id not in self.settlements:
            load_settlements(self.session, self.settlements, [line_id])
        return self.settlements[line_id]

    def write(
        self,
        line: Line,
        type_: TransactionType,
        amount: int,
        *,
        reverses: uuid.UUID | None = None,
        details: str | None = None,
    ) -> uuid.UUID:
        """Append a transaction for `line` and move the wallet balance by `amount`.

        Returns the transaction's id; the row is inserted at the next flush (journal).
        """
        if line.reward_id not in self.wallets:
            raise InconsistentLedger(f"line {line.id} has no wallet of reward {line.reward_id}")
        reward = self.rewards[line.reward_id]
        campaign = self.campaign(line.campaign_id)
        event = self.event
        tx_id = uuid.uuid4()
        journal.add(
            self.session,
            {
                "id": tx_id,
                "brand_id": event.brand_id,
                "customer_id": line.customer_id,
                "event_id": event.id,
                "line_id": line.id,
                "reward_id": line.reward_id,
                "campaign_id": line.campaign_id,
                "channel_id": event.channel_id,
                "store_id": event.store_id,
                "type": type_.value,
                "amount": amount,
                "cost": reward.cost * abs(amount),
                "details": details,
                "funded_by": campaign.funded_by if campaign else None,
                "event_type": event.type,
                "reward_type": reward.type,
                "reverses_id": reverses,
                "issued_at": event.issued_at,
                "created_at": self.now,
            },
        )
        # Also what makes the session flush, and so insert the row (journal).
        self.wallets[line.reward_id].balance += amount
        return tx_id


def load_context(
    session: Session,
    event: Event,
    reward_ids: Iterable[uuid.UUID] = (),
    now: datetime | None = None,
) -> Context:
    """Lock all of the customer's wallets, creating those of `reward_ids` first."""
    ids = sorted(set(reward_ids))
    if ids:
        known = set(
            session.scalars(
                select(Reward.id).where(Reward.id.in_(ids), Reward.brand_id == event.brand_id)
            )
        )
        missing = [str(i) for i in ids if i not in known]
        if missing:
            raise InconsistentLedger(f"unknown reward(s) for this brand: {', '.join(missing)}")
        session.execute(
            insert(Wallet)
            .values(
                [
                    {
                        "customer_id": event.customer_id,
                        "reward_id": r,
                        "brand_id": event.brand_id,
                        "balance": 0,
                    }
                    for r in ids
                ]
            )
            .on_conflict_do_nothing()
        )
    held = lock_customers(session, [event.customer_id])[event.customer_id]
    return Context(session, event, held.rewards, held.wallets, held.customer, now or utcnow())


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
    for settlement in ctx.settlements_of(line.id):
        if amount <= 0:
            break
        if settlement.amount <= 0:  # given back in full earlier in this transaction
            continue
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


def settle_debts(ctx: Context, reward_ids: Iterable[uuid.UUID]) -> None:
    """Pay the customer's debt lines of these rewards from live points, soonest expiry first."""
    ids = sorted(set(reward_ids))
    if not ids:
        return
    if ctx.debts is not None:
        debtors = ctx.debts.of(ctx.event.customer_id, ids)
    else:
        debtors = list(
            ctx.session.scalars(_DEBTORS, {"customer_id": ctx.event.customer_id, "reward_ids": ids})
        )
    creditors: dict[uuid.UUID, list[Line]] = {}
    for debtor in debtors:
        if debtor.reward_id not in creditors:
            creditors[debtor.reward_id] = spendable_lines(ctx, debtor.reward_id)
        for creditor in creditors[debtor.reward_id]:
            if debtor.remaining >= 0:
                break
            pay = min(-debtor.remaining, creditor.remaining - creditor.reserved)
            if pay <= 0:
                continue
            creditor.remaining -= pay
            debtor.remaining += pay
            settlement = Settlement(
                debtor_line_id=debtor.id, creditor_line_id=creditor.id, amount=pay
            )
            ctx.session.add(settlement)
            if debtor.id in ctx.settlements:
                # Not yet flushed, so no seq: this is the newest, and comes first.
                ctx.settlements[debtor.id].insert(0, settlement)


def spendable_lines(ctx: Context, reward_id: uuid.UUID) -> list[Line]:
    """Live lines with unreserved points not past their date: soonest expiry first."""
    return list(
        ctx.session.scalars(
            _SPENDABLE,
            {"customer_id": ctx.event.customer_id, "reward_id": reward_id, "now": ctx.now},
        )
    )


def recompute_tier(ctx: Context) -> None:
    """Place the customer in the brand's tier table by their POINTS balance (SPEC §6.4)."""
    session = ctx.session
    brand = session.get_one(Brand, ctx.event.brand_id)
    tiers: list[dict[str, Any]] = list(brand.settings.get("tiers") or [])
    customer = ctx.customer
    # ctx.wallets are all of the customer's, locked and current.
    points = sum(
        wallet.balance
        for reward_id, wallet in ctx.wallets.items()
        if ctx.rewards[reward_id].type == RewardType.POINTS
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
    customer = ctx.customer
    ctx.event.result_wallet = {
        str(reward_id): ctx.wallets[reward_id].balance for reward_id in sorted(ctx.wallets)
    }
    ctx.event.result_customer = {"id": str(customer.id), "tier": customer.tier}
