"""The reversal algorithm (SPEC §6): undo an event's redemptions and accumulations.

All of it happens in the caller's one database transaction:

1. Redemptions: each allocation goes back to the very line it came from, with
   that line's own expiration date; points landing on an expired line expire
   again at once (EXPIRATION transaction).
2. Accumulations: each line the event created gives back its amount, less what
   already expired, as one REVERSAL transaction per line. What the customer has
   spent since is the shortfall, and the policy decides: `negative` leaves the
   line below zero (a debt later points pay first), `clamp` takes back only what
   is left, `fail` refuses the whole reversal.
3. Gift cards the event issued are voided; a redeemed one is a shortfall.
4. Debts are settled from live points, the tier recomputed, the result kept.

An unfulfilled (reserved) event is cancelled instead: holds released, pending
accumulations dropped, nothing was in the wallet.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from worker.ledger.errors import InconsistentLedger, ShortfallRefused
from worker.ledger.reservations import cancel
from worker.ledger.wallet import (
    Context,
    Debts,
    load_settlements,
    lock_customers,
    recompute_tier,
    return_points,
    settle_debts,
    snapshot,
    utcnow,
)
from worker.models import (
    Allocation,
    Campaign,
    Event,
    EventStatus,
    GiftCard,
    Line,
    LineState,
    Redemption,
    ReversalStatus,
    Settlement,
    Shortfall,
    Transaction,
    TransactionType,
    one_of,
)


@dataclass
class ShortfallReport:
    policy: str
    lines: list[dict[str, Any]] = field(default_factory=list)
    gift_cards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(int(item["amount"]) for item in self.lines)

    def as_json(self) -> dict[str, Any] | None:
        if not self.lines and not self.gift_cards:
            return None
        return {
            "policy": self.policy,
            "total": self.total,
            "lines": self.lines,
            "gift_cards": self.gift_cards,
        }


# The reads ahead, built once (as in worker.ledger.wallet), for one event or for a
# bulk batch's. Each line comes with its ACCUMULATION's id and the campaign its
# transactions will name; each allocation with the line it took from, locked.
_LINES = (
    select(Line, Transaction.id, Campaign)
    .outerjoin(
        Transaction,
        (Transaction.line_id == Line.id) & (Transaction.type == TransactionType.ACCUMULATION.value),
    )
    .outerjoin(Campaign, Campaign.id == Line.campaign_id)
    .where(one_of(Line.event_id, "event_ids"))
    .order_by(Line.id)
)
_ALLOCATIONS = (
    select(Allocation.id, Allocation.amount, Allocation.transaction_id, Line, Campaign)
    .add_columns(Redemption.event_id)
    .join(Redemption, Redemption.id == Allocation.redemption_id)
    .join(Line, Line.id == Allocation.line_id)
    .outerjoin(Campaign, Campaign.id == Line.campaign_id)
    .where(one_of(Redemption.event_id, "event_ids"))
    .order_by(Redemption.id, Allocation.id)
    .with_for_update(of=Line)
)
_GIFT_CARDS = select(GiftCard).where(one_of(GiftCard.event_id, "event_ids")).order_by(GiftCard.id)


class Given(NamedTuple):
    """An allocation of one of the event's redemptions: what to give back, to which line."""

    id: uuid.UUID
    amount: int
    transaction_id: uuid.UUID | None
    line: Line  # locked


@dataclass
class Ahead:
    """What the reversal of one fulfilled event reads before it writes anything."""

    ctx: Context
    lines: list[Line] = field(default_factory=list)
    accumulations: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # by line id
    given: list[Given] = field(default_factory=list)
    cards: list[GiftCard] = field(default_factory=list)


def read_ahead(
    session: Session, events: Sequence[Event], now: datetime | None = None
) -> dict[uuid.UUID, Ahead]:
    """Lock the customers' wallets (the lock order), then read everything the events'
    reversals touch in one query per table while nothing is pending: the writes are
    then flushed together, not one by one between reads.

    For a batch, the events share the customers' locked rows, the campaigns and
    the settlements, so that each reversal sees what the ones before it did.
    """
    now = now or utcnow()
    held = lock_customers(session, [event.customer_id for event in events])
    debts = Debts.read(session, held)
    campaigns: dict[uuid.UUID, Campaign] = {}
    settlements: dict[uuid.UUID, list[Settlement]] = {}
    ahead = {}
    for event in events:
        customer = held[event.customer_id]
        ctx = Context(
            session,
            event,
            customer.rewards,
            customer.wallets,
            customer.customer,
            now,
            campaigns=campaigns,
            settlements=settlements,
            debts=debts,
        )
        ahead[event.id] = Ahead(ctx)
    of_events = {"event_ids": list(ahead)}
    accumulated = session.execute(_LINES, of_events).all()
    for line, tx, campaign in accumulated:
        _accumulated(ahead[line.event_id], line, tx)
        debts.watch([line])  # taken back under `negative`, it goes below zero
        if campaign is not None:
            campaigns[campaign.id] = campaign
    given = session.execute(_ALLOCATIONS, of_events).all()
    for allocation_id, amount, transaction_id, line, campaign, event_id in given:
        ahead[event_id].given.append(Given(allocation_id, amount, transaction_id, line))
        if campaign is not None:
            campaigns[campaign.id] = campaign
    for card in session.scalars(_GIFT_CARDS, of_events):
        ahead[card.event_id].cards.append(card)
    load_settlements(session, settlements, (row.Line.id for row in given))
    return ahead


def reverse_event(
    session: Session,
    event: Event,
    policy: Shortfall,
    now: datetime | None = None,
    ahead: Ahead | None = None,
) -> ShortfallReport:
    """Undo a RESOLVED event's effects. Raises ShortfallRefused under `fail`.

    `ahead` is the event's reads from a batch's read_ahead; alone, it reads its own.
    """
    if not event.fulfilled:
        cancel(event, now)
        event.reversal_status = ReversalStatus.CANCELLED.value
        return ShortfallReport(policy=policy.value)
    if ahead is None:
        ahead = read_ahead(session, [event], now)[event.id]
    ctx = ahead.ctx
    report = ShortfallReport(policy=policy.value)

    for allocation in ahead.given:
        _give_back(ctx, allocation)
    for line in ahead.lines:
        _take_back(ctx, line, ahead.accumulations.get(line.id), policy, report)
    for card in ahead.cards:
        if card.voided_at is not None:
            continue
        if card.redeemed_at is not None:
            report.gift_cards.append({"code": card.code, "reason": "already redeemed"})
            continue
        card.voided_at = ctx.now

    if policy == Shortfall.FAIL and report.as_json() is not None:
        raise ShortfallRefused(
            f"shortfall of {report.total} point(s) and {len(report.gift_cards)} redeemed "
            "gift card(s); policy 'fail' refuses the reversal"
        )
    reward_ids = {line.reward_id for line in ahead.lines}
    reward_ids |= {allocation.line.reward_id for allocation in ahead.given}
    settle_debts(ctx, reward_ids | {card.reward_id for card in ahead.cards})
    recompute_tier(ctx)
    event.status = EventStatus.REVERSED.value
    event.reversed_at = ctx.now
    event.reversal_status = ReversalStatus.REVERSED.value
    event.reversal_shortfall = report.as_json()
    snapshot(ctx)
    return report


def _accumulated(ahead: Ahead, line: Line, accumulation: uuid.UUID | None) -> None:
    """One row of _LINES: the event's line and its ACCUMULATION (None where none was found)."""
    if ahead.lines and ahead.lines[-1] is line:
        raise InconsistentLedger(f"line {line.id} has more than one accumulation")
    ahead.lines.append(line)
    if accumulation is not None:
        ahead.accumulations[line.id] = accumulation


def _give_back(ctx: Context, allocation: Given) -> None:
    line = allocation.line
    if allocation.transaction_id is None:
        raise InconsistentLedger(f"allocation {allocation.id} was never applied")
    ctx.write(
        line,
        TransactionType.REVERSAL,
        allocation.amount,
        reverses=allocation.transaction_id,
        details="redemption returned",
    )
    return_points(ctx, line, allocation.amount)
    # Every line this reversal touches then has the same columns to update, so the
    # flush sends their UPDATEs as one batch instead of one statement per line.
    flag_modified(line, "state")


def _take_back(
    ctx: Context,
    line: Line,
    accumulation: uuid.UUID | None,
    policy: Shortfall,
    report: ShortfallReport,
) -> None:
    if accumulation is None or line.state == LineState.REVERSED:
        raise InconsistentLedger(f"line {line.id} has no accumulation to reverse")
    # Points that already expired are gone from the wallet: not taken back twice.
    owed = line.amount - line.expired
    available = max(0, line.remaining - line.reserved)
    missing = max(0, owed - available)
    take = owed if policy == Shortfall.NEGATIVE else min(owed, available)
    if missing:
        report.lines.append(
            {"line_id": str(line.id), "reward_id": str(line.reward_id), "amount": missing}
        )
    details = f"shortfall {missing} ({policy.value})" if missing else "accumulation reversed"
    ctx.write(line, TransactionType.REVERSAL, -take, reverses=accumulation, details=details)
    line.remaining -= take
    line.state = LineState.REVERSED.value
