"""Request bodies. Unknown fields are refused (extra="forbid"); ids are UUIDs."""

from __future__ import annotations

import math
import re
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
    model_validator,
)

# Bounded so that no sum of amounts can overflow the ledger's 64-bit integers.
Amount = Annotated[StrictInt, Field(ge=1, le=1_000_000_000)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ShortfallPolicy = Literal["negative", "clamp", "fail"]


_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_DEPTH = 32  # of nested objects and arrays in a body; pydantic's serializer stops at 255


def refuse_unstorable(value: Any) -> Any:
    """Refuse what PostgreSQL or the JSON encoder cannot take, anywhere in a body: NUL,
    an unpaired surrogate, a non-finite number, nesting deeper than MAX_DEPTH.
    A 422 here, not a 500 at the INSERT or when the answer is encoded."""
    stack: list[tuple[str, int, Any]] = [("", 0, value)]
    while stack:
        where, depth, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or _SURROGATE.search(item):
                raise ValueError(f"{where or 'text'} contains NUL or an unpaired surrogate")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{where or 'number'} is not a finite number")
        elif isinstance(item, dict | list | tuple) and depth >= MAX_DEPTH:
            raise ValueError(f"{where} is nested more than {MAX_DEPTH} levels deep")
        elif isinstance(item, dict):
            for key, inner in item.items():
                # ascii(): the path goes into the error message, which must itself be valid text.
                path = f"{where}.{ascii(key)[1:-1][:40]}" if where else ascii(key)[1:-1][:40]
                stack.extend(((path, depth + 1, key), (path, depth + 1, inner)))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}[{i}]", depth + 1, inner) for i, inner in enumerate(item))
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        return refuse_unstorable(data)


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
    # 100, not Name's 200: the worker writes it to customers.tier, a varchar(100).
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    min_points: Annotated[StrictInt, Field(ge=0, le=1_000_000_000_000)]


class SettingsIn(Strict):
    shortfall: ShortfallPolicy = "negative"
    reversal_window_days: Annotated[StrictInt, Field(ge=1, le=3650)] | None = None
