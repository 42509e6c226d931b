"""Response models: what /openapi.json and /docs say each route answers (SPEC §4).

They document; they do not serialize. The routes keep building their bodies from
worker.ledger.views (the seed's names, exactly) and return them as they are, so a
model can never reshape or drop a field on its way out. The models state every
field (extra="forbid"), and tests/unit/test_openapi.py validates real answers
against them, so the document and the bodies cannot drift apart unnoticed.

The event is the seed's event object (../shared/seed/reverse-event-api.txt) plus
`brand_id`, `channel_id`, `store_id`, `error` and `reversal` (SPEC §3, §5).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventStatusName = Literal[
    "PENDING", "PROCESSING", "FAILED", "RESOLVED", "CANCELLED", "EXPIRED", "REVERSED"
]
ReversalStatusName = Literal["PENDING", "PROCESSING", "REVERSED", "CANCELLED", "FAILED"]
RewardTypeName = Literal["POINTS", "DISCOUNT", "GIFT_CARD", "PRODUCT"]
TransactionTypeName = Literal[
    "ACCUMULATION", "REDEMPTION", "EXPIRATION", "MIGRATION", "TRANSFER", "REVERSAL"
]
ShortfallPolicyName = Literal["negative", "clamp", "fail"]


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- the event -------------------------------------------------------------------


class LineOut(Out):
    amount: int = Field(description="The amount of the line")
    reward_id: uuid.UUID = Field(description="The reward id of the line")
    campaign_id: uuid.UUID | None = Field(description="The campaign id of the line")
    brand_id: uuid.UUID = Field(description="The id of the brand that originated the line")
    issued_at: datetime | None = Field(description="The date when the line was issued")
    expiration_date: datetime | None = Field(description="The expiration date of the line")
    reservation_expires_at: datetime | None = Field(
        description="The reservation expiration date of the line"
    )


class GiftCardOut(Out):
    code: str = Field(description="The gift card code to use in the store")
    reward_id: uuid.UUID = Field(description="The reward id of the gift card")
    customer_id: uuid.UUID = Field(description="The customer id that owns the gift card")
    rewarded_at: datetime | None = Field(
        description="The date when the gift card was issued to a customer"
    )
    description: str | None = Field(description="The gift card description")
    expired_at: datetime | None = Field(description="The expiration date of the gift card")
    redeemed_at: datetime | None = Field(description="The date when the gift card was redeemed")
    voided_at: datetime | None = Field(
        description="Extension: when a reversal voided the gift card"
    )


class TransactionAttributesOut(Out):
    line: LineOut | None = Field(description="The line used to create the transaction")
    campaign_name: str | None = Field(
        description="The name of the campaign that created the transaction"
    )


class TransactionOut(Out):
    id: uuid.UUID = Field(description="The transaction internal unique identifier")
    brand_id: str = Field(description="The brand id of the transaction")
    event_id: uuid.UUID = Field(description="The id of the event the created the transaction")
    campaign_id: uuid.UUID | None = Field(
        description="The id of the campaign that created the transaction"
    )
    channel_id: uuid.UUID | None = Field(
        description="The id of the channel that created the transaction"
    )
    store_id: uuid.UUID | None = Field(
        description="The id of the store that created the transaction"
    )
    funded_by: str | None = Field(
        description="Who funded the rewards used in this transaction", examples=["MARKETING"]
    )
    event_type: str = Field(
        description="The type of the event that created the transaction", examples=["PURCHASE"]
    )
    reward_type: RewardTypeName = Field(
        description="The type of the reward used in the transaction"
    )
    reward_id: uuid.UUID = Field(description="The reward id of the transaction")
    amount: int = Field(
        description="The amount of the transaction, signed: what it did to the wallet"
    )
    cost: float = Field(description="The cost of the rewards used in the transaction")
    details: str | None = Field(description="The explanation of why transaction was created")
    type: TransactionTypeName = Field(description="The type of the transaction")
    receiver_id: str | None = Field(description="The receiver id of the transaction")
    sender_id: str | None = Field(description="The sender id of the transaction")
    created_at: datetime = Field(description="The date when the transaction was created")
    issued_at: datetime = Field(description="The date when the transaction was issued")
    attributes: TransactionAttributesOut = Field(description="The attributes of the transaction")
    metadata: dict[str, Any] = Field(description="The metadata of the transaction")
    reverses_id: uuid.UUID | None = Field(
        description="Extension: on a REVERSAL, the transaction it undoes"
    )


class TierChangeOut(Out):
    customer_id: uuid.UUID
    from_tier: str | None
    to_tier: str | None
    at: datetime


class CustomerStateOut(Out):
    id: uuid.UUID
    tier: str | None = None


class EventResultOut(Out):
    wallet: dict[str, int] = Field(
        description="The wallet state after the event: balance per reward id"
    )
    customer: CustomerStateOut = Field(description="The customer state after the event")
    gift_card: list[GiftCardOut] = Field(description="Gift cards related to the event")
    accumulations: list[LineOut] = Field(description="Total accumulations after the event")
    redemptions: list[LineOut] = Field(description="Redemptions made during the event")
    transactions: list[TransactionOut] = Field(description="Total transactions after the event")
    customer_by_tier: list[TierChangeOut] = Field(
        description="Customer tier changes resulting from the event"
    )


class ShortfallOut(Out):
    policy: ShortfallPolicyName
    total: int = Field(description="Points the customer had already spent and could not give back")
    lines: list[dict[str, Any]]
    gift_cards: list[dict[str, Any]]


class ReversalOut(Out):
    reason: str | None
    requested_at: datetime | None
    status: ReversalStatusName | None
    attempts: int
    last_error: str | None
    dead_lettered: bool
    shortfall: ShortfallOut | None


class EventOut(Out):
    id: uuid.UUID = Field(description="The event internal unique identifier")
    customer_id: uuid.UUID = Field(description="The customer id of the event")
    type: str = Field(description="The type of the event", examples=["PURCHASE"])
    data: dict[str, Any] = Field(description="The data used in the event")
    fulfilled: bool = Field(description="If the event was fulfilled.")
    reserve: int | None = Field(description="The number of days to reserve the rewards")
    queue_message_id: str = Field(description="The message id in the queue")
    rewarding_campaigns: list[Any] = Field(
        description="The campaigns that rewarded the event including the rules that matched"
    )
    status: EventStatusName = Field(description="The status of the event")
    result: EventResultOut = Field(description="The result of the event")
    issued_at: datetime = Field(description="The date when the event was issued")
    processing_at: datetime | None = Field(description="The date when the event was processed")
    resolved_at: datetime | None = Field(
        description="The date when the event was resolved either succeed or failed"
    )
    cancelled_at: datetime | None = Field(description="The date when the event was cancelled")
    expired_at: datetime | None = Field(description="The date when the event expired")
    reversed_at: datetime | None = Field(description="The date when the event was reversed")
    brand_id: uuid.UUID = Field(description="Extension: the brand (tenant) of the event")
    channel_id: uuid.UUID | None = Field(description="Extension: the channel of the event")
    store_id: uuid.UUID | None = Field(description="Extension: the store of the event")
    error: str | None = Field(description="Extension: why the first processing FAILED")
    reversal: ReversalOut | None = Field(
        description="Extension: the reversal requested, if any (SPEC §5)"
    )
    dry_run: bool | None = Field(
        default=None, description="Extension: true on a dry-run answer, absent otherwise"
    )


class EventResponse(Out):
    data: EventOut


# --- bulk ------------------------------------------------------------------------


class BulkErrorOut(Out):
    code: str
    message: str


class BulkItemOut(Out):
    id: uuid.UUID
    status: Literal["ACCEPTED", "ALREADY_REVERSED", "REJECTED"]
    queue_message_id: str | None
    error: BulkErrorOut | None


class BulkResponse(Out):
    data: list[BulkItemOut] = Field(description="One result per item, in the request's order")


# --- customers -------------------------------------------------------------------


class BalanceOut(Out):
    reward_id: uuid.UUID
    reward_type: RewardTypeName
    reward_name: str
    balance: int = Field(description="May be negative: a debt (docs/decisions.md)")


class WalletLineOut(LineOut):
    id: uuid.UUID
    remaining: int = Field(description="What is left on the line; below zero, a debt")
    reserved: int
    expired: int
    state: str
    event_id: uuid.UUID


class WalletOut(Out):
    customer_id: uuid.UUID
    balances: list[BalanceOut]
    lines: list[WalletLineOut] = Field(description="The live lines, soonest expiry first")
    tier: str | None


class WalletResponse(Out):
    data: WalletOut


class TransactionsPage(Out):
    data: list[TransactionOut] = Field(description="Newest first")
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null: last")


# --- auth ------------------------------------------------------------------------


class TokenOut(Out):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds")


class TokenResponse(Out):
    data: TokenOut


# --- admin -----------------------------------------------------------------------


class RewardOut(Out):
    id: uuid.UUID
    type: RewardTypeName
    name: str
    cost: float


class RewardResponse(Out):
    data: RewardOut


class RewardListResponse(Out):
    data: list[RewardOut]


class CampaignOut(Out):
    id: uuid.UUID
    name: str
    funded_by: str


class CampaignResponse(Out):
    data: CampaignOut


class TierOut(Out):
    name: str
    min_points: int


class TiersResponse(Out):
    data: list[TierOut]


class BrandSettingsOut(Out):
    shortfall: ShortfallPolicyName
    reversal_window_days: int | None


class BrandSettingsResponse(Out):
    data: BrandSettingsOut


# --- health ----------------------------------------------------------------------


class HealthOut(Out):
    status: Literal["ok"]


class HealthResponse(Out):
    data: HealthOut


class ReadyOut(Out):
    status: Literal["ready"]
    checks: dict[str, str]


class ReadyResponse(Out):
    data: ReadyOut


# --- errors ----------------------------------------------------------------------


class ErrorOut(Out):
    code: str = Field(examples=["not_found"])
    message: str
    details: Any = Field(default=None, description="More about the error, or null")


class ErrorResponse(Out):
    error: ErrorOut


ERRORS: dict[int, str] = {
    401: "Missing, invalid or expired token, or a revoked API key (`unauthorized`)",
    404: "No such object for this brand; another brand's answers the same (`not_found`)",
    409: "The request conflicts with the object's state (`not_reversible`, `conflict`, ...)",
    413: "Request body over MAX_BODY_BYTES (`payload_too_large`)",
    422: "Malformed JSON, wrong types, unknown fields, non-UUID ids "
    "(`malformed_json`, `validation_error`, `unknown_reference`)",
    429: "Over the brand's rate limit; see Retry-After (`rate_limited`)",
    503: "A dependency is down (`not_ready`)",
}


def documented(
    answers: dict[int, tuple[type[BaseModel], str]], errors: Iterable[int] = ()
) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: its successful answers and its error envelopes."""
    spec: dict[int | str, dict[str, Any]] = {
        status: {"model": model, "description": text} for status, (model, text) in answers.items()
    }
    for status in errors:
        spec[status] = {"model": ErrorResponse, "description": ERRORS[status]}
    return spec


INTAKE_ERRORS = (401, 404, 409, 413, 422, 429)
ADMIN_ERRORS = (401, 404, 409, 413, 422)

RECORD_EVENT = documented(
    {
        202: (EventResponse, "Recorded, PENDING; the worker takes it to RESOLVED or FAILED"),
        200: (EventResponse, "An event with this client `id` exists already: itself"),
    },
    INTAKE_ERRORS,
)
READ_EVENT = documented({200: (EventResponse, "The event")}, INTAKE_ERRORS)
FULFIL_EVENT = documented({200: (EventResponse, "The event, now fulfilled")}, INTAKE_ERRORS)
REVERSE_EVENT = documented(
    {
        202: (EventResponse, "Accepted: the event, PENDING, with a new `queue_message_id`"),
        200: (EventResponse, "Already REVERSED (nothing enqueued), or a dry run's result"),
    },
    INTAKE_ERRORS,
)
REVERSE_BULK = documented({202: (BulkResponse, "One result per item")}, INTAKE_ERRORS)
WALLET = documented({200: (WalletResponse, "Balances and live lines")}, INTAKE_ERRORS)
TRANSACTIONS = documented({200: (TransactionsPage, "A page, newest first")}, INTAKE_ERRORS)
AUTHORIZE = documented({200: (TokenResponse, "A signed JWT")}, (401, 422))
REWARD = documented({200: (RewardResponse, "The reward")}, ADMIN_ERRORS)
REWARDS = documented({200: (RewardListResponse, "The brand's rewards")}, (401, 422))
CAMPAIGN = documented({200: (CampaignResponse, "The campaign")}, ADMIN_ERRORS)
TIERS = documented({200: (TiersResponse, "The tier table, lowest first")}, (401, 413, 422))
SETTINGS = documented({200: (BrandSettingsResponse, "The brand's settings")}, (401, 413, 422))
HEALTH = documented({200: (HealthResponse, "The process is up")})
READY = documented({200: (ReadyResponse, "Database and broker reachable")}, (503,))
