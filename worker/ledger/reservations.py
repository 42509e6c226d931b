"""Reserved (unfulfilled) events (SPEC §5): pending accumulations and held redemptions.

An unfulfilled event's accumulations are lines in state PENDING (not in the
wallet) and its redemptions are holds (`reserved`) on the lines they would take
from. Fulfilment applies both; a cancellation (its reversal) or a lapsed
reservation releases the holds and drops the pending lines.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import object_session

from worker.ledger.errors import InconsistentLedger
from worker.ledger.wallet import (
    Context,
    expire_now,
    is_past,
    load_context,
    recompute_tier,
    settle_debts,
    snapshot,
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


def _context(event: Event, now: datetime | None) -> tuple[Context, list[Line], list[Redemption]]:
    session = object_session(event)
    if session is None:
        raise InconsistentLedger("event is not attached to a session")
    lines = list(session.scalars(select(Line).where(Line.event_id == event.id).order_by(Line.id)))
    redemptions = list(
        session.scalars(
            select(Redemption).where(Redemption.event_id == event.id).order_by(Redemption.id)
        )
    )
    cards = session.scalars(select(GiftCard.reward_id).where(GiftCard.event_id == event.id))
    reward_ids = {ln.reward_id for ln in lines} | {r.reward_id for r in redemptions} | set(cards)
    return load_context(session, event, reward_ids, now), lines, redemptions


def fulfil(event: Event, now: datetime | None = None) -> None:
    """Apply a reserved event: its pending lines enter the wallet, its holds are spent."""
    ctx, lines, redemptions = _context(event, now)
    for line in lines:
        if line.state != LineState.PENDING:
            continue
        line.state = LineState.ACTIVE.value
        line.reservation_expires_at = None
        ctx.write(line, TransactionType.ACCUMULATION, line.amount)
    for redemption in redemptions:
        _spend_holds(ctx, redemption)
    settle_debts(ctx, {ln.reward_id for ln in lines} | {r.reward_id for r in redemptions})
    recompute_tier(ctx)
    event.fulfilled = True
    snapshot(ctx)


def _spend_holds(ctx: Context, redemption: Redemption) -> None:
    allocations = ctx.session.scalars(
        select(Allocation).where(Allocation.redemption_id == redemption.id).order_by(Allocation.id)
    ).all()
    ctx.session.flush()
    for allocation in allocations:
        if allocation.transaction_id is not None:
            continue
        line = ctx.session.get_one(Line, allocation.line_id, with_for_update=True)
        line.reserved -= allocation.amount
        line.remaining -= allocation.amount
        tx_id = ctx.write(line, TransactionType.REDEMPTION, -allocation.amount)
        ctx.session.flush()
        allocation.transaction_id = tx_id
    redemption.held = False


def release(ctx: Context, lines: list[Line], redemptions: list[Redemption]) -> None:
    """Free the holds and drop the pending lines of a reservation that will not happen."""
    for redemption in redemptions:
        if not redemption.held:
            continue
        allocations = ctx.session.scalars(
            select(Allocation).where(Allocation.redemption_id == redemption.id)
        ).all()
        for allocation in allocations:
            line = ctx.session.get_one(Line, allocation.line_id, with_for_update=True)
            line.reserved -= allocation.amount
            # Held points of a line that expired meanwhile expire now that they are free.
            if is_past(line.expiration_date, ctx.now):
                expire_now(ctx, line, "hold released on a line that has expired")
        redemption.held = False
    for line in lines:
        if line.state == LineState.PENDING:
            line.state = LineState.DROPPED.value
            line.remaining = 0  # never entered the wallet; nothing of it remains


def cancel(event: Event, now: datetime | None = None) -> None:
    """The reversal of a reserved event: CANCELLED, nothing was ever in the wallet."""
    ctx, lines, redemptions = _context(event, now)
    release(ctx, lines, redemptions)
    event.status = EventStatus.CANCELLED.value
    event.cancelled_at = ctx.now
    snapshot(ctx)


def expire(event: Event, now: datetime | None = None) -> None:
    """A reservation whose time ran out: EXPIRED, holds released, pending lines dropped."""
    ctx, lines, redemptions = _context(event, now)
    release(ctx, lines, redemptions)
    event.status = EventStatus.EXPIRED.value
    event.expired_at = ctx.now
    snapshot(ctx)
