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
from typing import Any

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from worker.ledger.errors import InconsistentLedger, ShortfallRefused
from worker.ledger.reservations import cancel
from worker.ledger.wallet import (
    Context,
    load_context,
    recompute_tier,
    return_points,
    settle_debts,
    snapshot,
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
    Shortfall,
    Transaction,
    TransactionType,
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


# The reads ahead, built once (as in worker.ledger.wallet). Each line comes with its
# ACCUMULATION and the campaign its transactions will name; each allocation with
# the line it took from, locked.
_LINES = (
    select(Line, Transaction, Campaign)
    .outerjoin(
        Transaction,
        (Transaction.line_id == Line.id) & (Transaction.type == TransactionType.ACCUMULATION.value),
    )
    .outerjoin(Campaign, Campaign.id == Line.campaign_id)
    .where(Line.event_id == bindparam("event_id"))
    .order_by(Line.id)
)
_ALLOCATIONS = (
    select(Allocation, Line, Campaign)
    .join(Redemption, Redemption.id == Allocation.redemption_id)
    .join(Line, Line.id == Allocation.line_id)
    .outerjoin(Campaign, Campaign.id == Line.campaign_id)
    .where(Redemption.event_id == bindparam("event_id"))
    .order_by(Redemption.id, Allocation.id)
    .with_for_update(of=Line)
)
_GIFT_CARDS = (
    select(GiftCard).where(GiftCard.event_id == bindparam("event_id")).order_by(GiftCard.id)
)


def reverse_event(
    session: Session, event: Event, policy: Shortfall, now: datetime | None = None
) -> ShortfallReport:
    """Undo a RESOLVED event's effects. Raises ShortfallRefused under `fail`."""
    if not event.fulfilled:
        cancel(event, now)
        event.reversal_status = ReversalStatus.CANCELLED.value
        return ShortfallReport(policy=policy.value)
    # Wallets first (the lock order), then everything the reversal touches, read
    # ahead in one query per table while nothing is pending: the writes below are
    # then flushed together, not one by one between reads.
    ctx = load_context(session, event, now=now)
    of_event = {"event_id": event.id}
    accumulated = session.execute(_LINES, of_event).all()
    lines, accumulations = _accumulations(accumulated)
    given = session.execute(_ALLOCATIONS, of_event).all()
    ctx.campaigns.update((c.id, c) for *_, c in [*accumulated, *given] if c is not None)
    cards = list(session.scalars(_GIFT_CARDS, of_event))
    ctx.load_settlements(line.id for _, line, _ in given)
    report = ShortfallReport(policy=policy.value)

    for allocation, line, _ in given:
        _give_back(ctx, allocation, line)
    for line in lines:
        _take_back(ctx, line, accumulations.get(line.id), policy, report)
    for card in cards:
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
    reward_ids = {line.reward_id for line in lines} | {line.reward_id for _, line, _ in given}
    settle_debts(ctx, reward_ids | {card.reward_id for card in cards})
    recompute_tier(ctx)
    event.status = EventStatus.REVERSED.value
    event.reversed_at = ctx.now
    event.reversal_status = ReversalStatus.REVERSED.value
    event.reversal_shortfall = report.as_json()
    snapshot(ctx)
    return report


def _accumulations(
    # The transaction (and the campaign) is None where none was found.
    rows: Sequence[Row[Line, Transaction, Campaign]],
) -> tuple[list[Line], dict[uuid.UUID, Transaction]]:
    """The event's lines, and the ACCUMULATION transaction of each by line id."""
    lines: list[Line] = []
    found: dict[uuid.UUID, Transaction] = {}
    for line, tx, _ in rows:
        if lines and lines[-1] is line:
            raise InconsistentLedger(f"line {line.id} has more than one accumulation")
        lines.append(line)
        if tx is not None:
            found[line.id] = tx
    return lines, found


def _give_back(ctx: Context, allocation: Allocation, line: Line) -> None:
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
    accumulation: Transaction | None,
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
    ctx.write(line, TransactionType.REVERSAL, -take, reverses=accumulation.id, details=details)
    line.remaining -= take
    line.state = LineState.REVERSED.value
