"""A small world to write ledger scenarios in: a brand, a reward, a campaign, and
helpers that go through the same functions the API and the worker call."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api_stub.auth import create_brand
from worker.db import unit_of_work
from worker.intake import create_event, request_reversal
from worker.ledger.invariants import assert_invariants
from worker.models import Campaign, Event, Reward, Wallet
from worker.processing import handle_message


@dataclass
class World:
    factory: Callable[[], Session]
    brand_id: uuid.UUID = field(default_factory=uuid.uuid4)
    api_key: str = ""
    reward_id: uuid.UUID = field(default_factory=uuid.uuid4)
    campaign_id: uuid.UUID = field(default_factory=uuid.uuid4)

    @classmethod
    def create(
        cls, factory: Callable[[], Session], settings: dict[str, Any] | None = None
    ) -> World:
        world = cls(factory)
        with unit_of_work(factory) as session:
            brand, world.api_key = create_brand(session, "test brand", settings or {})
            world.brand_id = brand.id
            session.add(
                Reward(id=world.reward_id, brand_id=brand.id, type="POINTS", name="Points", cost=1)
            )
            session.add(
                Campaign(
                    id=world.campaign_id, brand_id=brand.id, name="Spring", funded_by="MARKETING"
                )
            )
        return world

    def submit(
        self,
        customer: uuid.UUID,
        accumulate: list[int | tuple[int, datetime | None]] = (),  # type: ignore[assignment]
        redeem: list[int] = (),  # type: ignore[assignment]
        gift_cards: int = 0,
        fulfilled: bool = True,
    ) -> uuid.UUID:
        """Record an event at intake (PENDING); returns its id."""
        items = [a if isinstance(a, tuple) else (a, None) for a in accumulate]
        body = {
            "customer_id": customer,
            "type": "PURCHASE",
            "fulfilled": fulfilled,
            "accumulate": [
                {
                    "reward_id": str(self.reward_id),
                    "campaign_id": str(self.campaign_id),
                    "amount": amount,
                    "expiration_date": expiry.isoformat() if expiry else None,
                }
                for amount, expiry in items
            ],
            "redeem": [{"reward_id": str(self.reward_id), "amount": amount} for amount in redeem],
            "gift_cards": [
                {"reward_id": str(self.reward_id), "description": "card"} for _ in range(gift_cards)
            ],
        }
        with unit_of_work(self.factory) as session:
            event, _ = create_event(session, self.brand_id, body)
            return event.id

    def deliver(self, event_id: uuid.UUID) -> str:
        """Deliver the event's current message to the worker's handler, as Celery would."""
        return handle_message(event_id, self.message_id(event_id), self.factory)

    def event(self, customer: uuid.UUID, **kwargs: Any) -> uuid.UUID:
        event_id = self.submit(customer, **kwargs)
        self.deliver(event_id)
        return event_id

    def request_reversal(self, event_id: uuid.UUID, policy: str | None = None) -> int:
        with unit_of_work(self.factory) as session:
            return request_reversal(
                session, self.brand_id, event_id, "refund", shortfall=policy
            ).status_code

    def reverse(self, event_id: uuid.UUID, policy: str | None = None) -> str:
        self.request_reversal(event_id, policy)
        return self.deliver(event_id)

    def message_id(self, event_id: uuid.UUID) -> str:
        with unit_of_work(self.factory) as session:
            return session.get_one(Event, event_id).queue_message_id

    def get(self, event_id: uuid.UUID) -> Event:
        with unit_of_work(self.factory) as session:
            return session.get_one(Event, event_id)

    def balance(self, customer: uuid.UUID) -> int:
        with unit_of_work(self.factory) as session:
            value = session.scalar(
                select(func.coalesce(func.sum(Wallet.balance), 0)).where(
                    Wallet.customer_id == customer, Wallet.reward_id == self.reward_id
                )
            )
            return int(value or 0)

    def check(self, customer: uuid.UUID | None = None) -> None:
        with unit_of_work(self.factory) as session:
            assert_invariants(session, customer)
