"""The ledger's tables (SPEC §3). Every amount is an integer; costs are decimals.

Transactions are append-only: nothing here updates or deletes one. A unique
constraint stands behind every idempotency check: one REVERSAL per undone
transaction (`transactions.reverses_id`), one event per id, one key hash.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    Uuid,
    any_,
    bindparam,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        dict[str, Any]: JSONB,
        list[Any]: JSONB,
        datetime: DateTime(timezone=True),
        uuid.UUID: Uuid,
        Decimal: Numeric(18, 4),
    }


# The partial indexes' predicate for events in flight; a query meant to use one of
# them says it in these words, so that the planner matches it whatever plan it caches.
IN_FLIGHT_SQL = "status IN ('PENDING', 'PROCESSING')"


def one_of(column: Any, name: str) -> ColumnElement[bool]:
    """`column = ANY(:name)`: the values travel as one array parameter.

    `IN (:name)` with an expanding parameter puts one placeholder per value in the
    statement's text, so the text changes with the number of values: SQLAlchemy
    renders it again at every execution, psycopg converts it again, and PostgreSQL
    parses and plans it again. With one array the text never changes, and PostgreSQL
    finds the rows by the same index (`IN (…)` is `= ANY (ARRAY[…])` to it).
    """
    # Strings as text[]: a cast to varchar(n)[] would cut a longer value, which could
    # then match a row holding its first n characters.
    element = Text() if isinstance(column.type, String) else column.type
    same: ColumnElement[bool] = column == any_(bindparam(name, type_=ARRAY(element)))
    return same


class EventStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    FAILED = "FAILED"
    RESOLVED = "RESOLVED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REVERSED = "REVERSED"


class ReversalStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    REVERSED = "REVERSED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


class TransactionType(enum.StrEnum):
    ACCUMULATION = "ACCUMULATION"
    REDEMPTION = "REDEMPTION"
    EXPIRATION = "EXPIRATION"
    MIGRATION = "MIGRATION"
    TRANSFER = "TRANSFER"
    REVERSAL = "REVERSAL"


class RewardType(enum.StrEnum):
    POINTS = "POINTS"
    DISCOUNT = "DISCOUNT"
    GIFT_CARD = "GIFT_CARD"
    PRODUCT = "PRODUCT"


class LineState(enum.StrEnum):
    PENDING = "PENDING"  # accumulation of an unfulfilled event: not in the wallet yet
    ACTIVE = "ACTIVE"
    EXPIRED = "EXPIRED"
    REVERSED = "REVERSED"
    DROPPED = "DROPPED"  # pending accumulation of a cancelled or expired reservation


class Shortfall(enum.StrEnum):
    NEGATIVE = "negative"
    CLAMP = "clamp"
    FAIL = "fail"


def _now_default() -> Any:
    return func.now()


class Brand(Base):
    __tablename__ = "brands"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    settings: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())
    revoked_at: Mapped[datetime | None]


class Reward(Base):
    __tablename__ = "rewards"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    cost: Mapped[Decimal] = mapped_column(server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(server_default=_now_default())


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    funded_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(server_default=_now_default())


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"), index=True)
    tier: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())


class Event(Base):
    __tablename__ = "events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"))
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"), index=True)
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    fulfilled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    reserve: Mapped[int | None] = mapped_column(Integer)
    channel_id: Mapped[uuid.UUID | None]
    store_id: Mapped[uuid.UUID | None]
    rewarding_campaigns: Mapped[list[Any]] = mapped_column(server_default=text("'[]'::jsonb"))
    # What the platform decided upstream: accumulate / redeem / gift_cards.
    request: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(String(16))
    queue_message_id: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    issued_at: Mapped[datetime]
    processing_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    reversed_at: Mapped[datetime | None]
    reservation_expires_at: Mapped[datetime | None]

    # Snapshots taken when the worker finished: the wallet and customer "after the event".
    result_wallet: Mapped[dict[str, Any] | None]
    result_customer: Mapped[dict[str, Any] | None]

    reversal_reason: Mapped[str | None] = mapped_column(String(500))
    reversal_requested_at: Mapped[datetime | None]
    reversal_status: Mapped[str | None] = mapped_column(String(16))
    reversal_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    reversal_last_error: Mapped[str | None] = mapped_column(Text)
    reversal_dead_lettered: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    reversal_policy: Mapped[str | None] = mapped_column(String(16))
    # None is SQL's NULL, not JSON's `null`, whether the ORM writes it or an UPDATE does
    # (worker.intake.request_reversals).
    reversal_shortfall: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))

    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())
    # The sweeper's lease clock: bumped on every state change.
    updated_at: Mapped[datetime] = mapped_column(server_default=_now_default())

    __table_args__ = (
        Index("ix_events_brand_created", "brand_id", "created_at"),
        Index(
            "ix_events_in_flight",
            "updated_at",
            postgresql_where=text(IN_FLIGHT_SQL),
        ),
        # Which messages still have an event in flight: a delivery that took reversals
        # along revokes only the messages left with nothing to do (worker.tasks).
        Index(
            "ix_events_in_flight_message",
            "queue_message_id",
            postgresql_where=text(IN_FLIGHT_SQL),
        ),
        Index(
            "ix_events_reservations",
            "reservation_expires_at",
            postgresql_where=text("fulfilled = false AND status = 'RESOLVED'"),
        ),
    )


class Line(Base):
    """A wallet line: one per accumulation. `remaining` below zero is a debt (SPEC §6.1)."""

    __tablename__ = "lines"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"))
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"))
    reward_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rewards.id"))
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("campaigns.id"))
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    expired: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    reserved: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    state: Mapped[str] = mapped_column(String(16))
    issued_at: Mapped[datetime]
    expiration_date: Mapped[datetime | None]
    reservation_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())

    __table_args__ = (
        CheckConstraint("amount > 0", name="ck_lines_amount_positive"),
        CheckConstraint("remaining <= amount", name="ck_lines_remaining_le_amount"),
        CheckConstraint("reserved >= 0", name="ck_lines_reserved_range"),
        Index("ix_lines_wallet", "customer_id", "reward_id", "expiration_date"),
    )


class Transaction(Base):
    """Append-only. `amount` is signed: what the transaction did to the wallet."""

    __tablename__ = "transactions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"))
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"))
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id"), index=True)
    line_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("lines.id"), index=True)
    reward_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rewards.id"))
    campaign_id: Mapped[uuid.UUID | None]
    channel_id: Mapped[uuid.UUID | None]
    store_id: Mapped[uuid.UUID | None]
    type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[Decimal] = mapped_column(server_default=text("0"))
    details: Mapped[str | None] = mapped_column(Text)
    funded_by: Mapped[str | None] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    reward_type: Mapped[str] = mapped_column(String(16))
    # A REVERSAL names the transaction it undoes; unique: undone at most once.
    reverses_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("transactions.id"), unique=True
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", server_default=text("'{}'::jsonb")
    )
    issued_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())

    __table_args__ = (Index("ix_transactions_customer_seq", "customer_id", "seq"),)
    # The ledger inserts its transactions as rows (worker.ledger.journal). One added
    # as an object (a test, a script) does not read seq and metadata back: without
    # RETURNING, a flush sends such rows as one pipelined executemany of one short,
    # prepared statement instead of one long multi-row INSERT parsed every time.
    __mapper_args__ = {"eager_defaults": False}  # noqa: RUF012 - SQLAlchemy reads this class attribute


class Redemption(Base):
    """A redemption the event asked for; its allocations say which lines paid it."""

    __tablename__ = "redemptions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id"), index=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"))
    reward_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rewards.id"))
    campaign_id: Mapped[uuid.UUID | None]
    amount: Mapped[int] = mapped_column(BigInteger)
    held: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())


class Allocation(Base):
    """How much one line gave to one redemption; reversal gives back exactly this."""

    __tablename__ = "allocations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    redemption_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("redemptions.id"), index=True)
    line_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("lines.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("transactions.id"))

    __table_args__ = (CheckConstraint("amount > 0", name="ck_allocations_amount_positive"),)


class Settlement(Base):
    """Points one line moved to pay another line's debt; undone before points return."""

    __tablename__ = "settlements"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    debtor_line_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("lines.id"), index=True)
    creditor_line_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("lines.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True))

    __table_args__ = (CheckConstraint("amount >= 0", name="ck_settlements_amount"),)


class Wallet(Base):
    """The balance per (customer, reward); its row is the customer's lock."""

    __tablename__ = "wallets"

    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"), primary_key=True)
    reward_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rewards.id"), primary_key=True)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"))
    balance: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class GiftCard(Base):
    __tablename__ = "gift_cards"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"))
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"))
    reward_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rewards.id"))
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id"), index=True)
    description: Mapped[str | None] = mapped_column(String(500))
    rewarded_at: Mapped[datetime]
    expired_at: Mapped[datetime | None]
    redeemed_at: Mapped[datetime | None]
    voided_at: Mapped[datetime | None]


class TierChange(Base):
    __tablename__ = "tier_changes"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"))
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id"))
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id"), index=True)
    from_tier: Mapped[str | None] = mapped_column(String(100))
    to_tier: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime]


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(server_default=_now_default())


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    task_name: Mapped[str] = mapped_column(String(200))
    task_id: Mapped[str | None] = mapped_column(String(64), index=True)
    event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    payload: Mapped[dict[str, Any]]
    error: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    first_failed_at: Mapped[datetime]
    last_failed_at: Mapped[datetime]
    replayed_at: Mapped[datetime | None]
