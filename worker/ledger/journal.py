"""The transactions a ledger operation writes, inserted together at the session's next flush.

A transaction is append-only and nothing reads one back as an object in the
transaction that wrote it, so it is kept as a row, not an ORM object: building and
flushing those objects was a fifth of a bulk reversal's CPU. The rows wait on the
session and go to PostgreSQL in one statement (worker.ledger.together) just
before the next flush: an explicit flush, an autoflush before a query, or the
commit's. Before the ORM's own writes, so that what points at a transaction (an
allocation) finds it; the lines the rows name exist by then (a new line is
flushed before it is written to, see worker.ledger.record). The same hook then
sends the changed lines, wallets and gift cards, one statement per table.

Every write also moves a wallet's balance, so a session with rows waiting always
has a flush to come. Rows still waiting when a transaction or savepoint ends were
rolled back with it, and are dropped.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, TypedDict

from sqlalchemy import Table, event
from sqlalchemy.orm import Session, SessionTransaction, UOWTransaction

from worker.ledger import together
from worker.models import Transaction

_WAITING = "ledger.transactions"
_TABLE: Table = Transaction.__table__  # type: ignore[assignment] # declared as FromClause


class Row(TypedDict):
    """One transactions row (seq and metadata take their defaults)."""

    id: uuid.UUID
    brand_id: uuid.UUID
    customer_id: uuid.UUID
    event_id: uuid.UUID
    line_id: uuid.UUID | None
    reward_id: uuid.UUID
    campaign_id: uuid.UUID | None
    channel_id: uuid.UUID | None
    store_id: uuid.UUID | None
    type: str
    amount: int
    cost: Decimal
    details: str | None
    funded_by: str | None
    event_type: str
    reward_type: str
    reverses_id: uuid.UUID | None
    issued_at: datetime
    created_at: datetime


def add(session: Session, row: Row) -> None:
    session.info.setdefault(_WAITING, []).append(row)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    rows: list[Row] | None = session.info.pop(_WAITING, None)
    if rows:
        together.insert(session.connection(), _TABLE, rows)
    # Then the lines, wallets and gift cards: no one's row points at a transaction
    # (an allocation does, and is the ORM's to insert after this).
    together.update_dirty(session)


@event.listens_for(Session, "after_transaction_end")
def _drop_waiting(session: Session, _transaction: SessionTransaction) -> None:
    session.info.pop(_WAITING, None)
