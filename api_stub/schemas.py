"""Request bodies. Unknown fields are refused (extra="forbid"); ids are UUIDs."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
)

# Bounded so that no sum of amounts can overflow the ledger's 64-bit integers.
Amount = Annotated[StrictInt, Field(ge=1, le=1_000_000_000)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ShortfallPolicy = Literal["negative", "clamp", "fail"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccumulateIn(Strict):
    reward_id: uuid.UUID
    campaign_id: uuid.UUID
    amount: Amount
    expiration_date: AwareDatetime | None = None


class RedeemIn(Strict):
    reward_id: uuid.UUID
    amount: Amount
    campaign_id: uuid.UUID | None = None


class GiftCardIn(Strict):
    reward_id: uuid.UUID
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    expired_at: AwareDatetime | None = None
    code: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{4,64}$")] | None = None


class EventIn(Strict):
    id: uuid.UUID | None = None
    customer_id: uuid.UUID
    type: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")] = "PURCHASE"
    data: dict[str, Any] = Field(default_factory=dict)
    issued_at: AwareDatetime | None = None
    channel_id: uuid.UUID | None = None
    store_id: uuid.UUID | None = None
    fulfilled: StrictBool = True
    reserve: Annotated[StrictInt, Field(ge=1, le=365)] | None = None
    rewarding_campaigns: list[Any] = Field(default_factory=list, max_length=100)
    accumulate: list[AccumulateIn] = Field(default_factory=list, max_length=1000)
    redeem: list[RedeemIn] = Field(default_factory=list, max_length=1000)
    gift_cards: list[GiftCardIn] = Field(default_factory=list, max_length=100)


class ReverseIn(Strict):
    reason: Reason
    shortfall: ShortfallPolicy | None = None
    dry_run: StrictBool = False


class BulkItemIn(Strict):
    id: uuid.UUID
    reason: Reason


class BulkReverseIn(Strict):
    events: list[BulkItemIn] = Field(min_length=1, max_length=1000)
    shortfall: ShortfallPolicy | None = None


class RewardIn(Strict):
    type: Literal["POINTS", "DISCOUNT", "GIFT_CARD", "PRODUCT"]
    name: Name
    cost: Annotated[Decimal, Field(ge=0, le=1_000_000, decimal_places=4)] = Decimal(0)


class CampaignIn(Strict):
    name: Name
    funded_by: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")] = "MARKETING"


class TierIn(Strict):
    name: Name
    min_points: Annotated[StrictInt, Field(ge=0, le=1_000_000_000_000)]


class SettingsIn(Strict):
    shortfall: ShortfallPolicy = "negative"
    reversal_window_days: Annotated[StrictInt, Field(ge=1, le=3650)] | None = None
