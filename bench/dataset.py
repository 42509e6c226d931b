"""The bench's data set: customers with history, and events ready to reverse.

One template customer is made by the service's own code (create_event, then the
worker's handle_message): a history event of 2K lines of 100 points, then K
purchases, each with 3 accumulation lines, one redemption of 150 points that the
ledger takes from 2 of the history lines (soonest expiry first: 100 + 50, then
50 + 100, ...) and one gift card. That customer is then cloned in SQL, as many
times as needed: every id the template's rows hold is mapped to md5(id:n), so a
clone is an exact copy of a ledger the real code wrote, with its own ids; the
invariants of SPEC §3 are checked on clones before anything is measured.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

PER_CUSTOMER = 5  # K: purchases to reverse per template customer
HISTORY_LINES = 2 * PER_CUSTOMER
TARGET_LINES = 3
REDEEM = 150  # from two history lines of 100: every redemption takes from exactly 2 lines

# Columns that name what all clones share (the brand's set-up); every other uuid
# column names a row of the customer's own ledger and is mapped to the clone's.
SHARED = frozenset({"brand_id", "reward_id", "campaign_id", "channel_id", "store_id"})
# The template's rows, table by table, in foreign-key order.
TABLES: tuple[tuple[str, str], ...] = (
    ("customers", "t.id = :t"),
    ("events", "t.customer_id = :t"),
    ("lines", "t.customer_id = :t"),
    ("transactions", "t.customer_id = :t"),
    ("redemptions", "t.customer_id = :t"),
    ("allocations", "t.redemption_id IN (SELECT id FROM redemptions WHERE customer_id = :t)"),
    ("settlements", "t.debtor_line_id IN (SELECT id FROM lines WHERE customer_id = :t)"),
    ("gift_cards", "t.customer_id = :t"),
    ("wallets", "t.customer_id = :t"),
    ("tier_changes", "t.customer_id = :t"),
)

Factory = Callable[[], Session]


def derive(template_id: uuid.UUID, n: int) -> uuid.UUID:
    """The id clone `n` gives to the template's row `template_id` (as the SQL does)."""
    return uuid.UUID(hashlib.md5(f"{template_id}:{n}".encode()).hexdigest())  # noqa: S324 - an id mapping, not security


@dataclass
class World:
    """One brand with its rewards and campaign, and an API key for it."""

    factory: Factory
    brand_id: uuid.UUID = field(default_factory=uuid.uuid4)
    api_key: str = ""
    points: uuid.UUID = field(default_factory=uuid.uuid4)
    card: uuid.UUID = field(default_factory=uuid.uuid4)
    campaign: uuid.UUID = field(default_factory=uuid.uuid4)

    @classmethod
    def create(cls, factory: Factory) -> World:
        from api_stub.auth import create_brand
        from worker.db import unit_of_work
        from worker.models import Campaign, Reward

        world = cls(factory)
        settings: dict[str, object] = {
            "shortfall": "negative",
            "tiers": [
                {"name": "SILVER", "min_points": 0},
                {"name": "GOLD", "min_points": 1000},
            ],
        }
        with unit_of_work(factory) as session:
            brand, world.api_key = create_brand(session, "bench", settings)
            world.brand_id = brand.id
            session.add(
                Reward(id=world.points, brand_id=brand.id, type="POINTS", name="Points", cost=0.01)
            )
            session.add(
                Reward(id=world.card, brand_id=brand.id, type="GIFT_CARD", name="Card", cost=5)
            )
            session.add(
                Campaign(id=world.campaign, brand_id=brand.id, name="Bench", funded_by="MARKETING")
            )
        return world

    def accumulation(self, amount: int, expires: datetime | None) -> dict[str, Any]:
        return {
            "reward_id": str(self.points),
            "campaign_id": str(self.campaign),
            "amount": amount,
            "expiration_date": expires.isoformat() if expires else None,
        }

    def record(self, body: dict[str, Any]) -> uuid.UUID:
        """Record an event as the api does, then apply it as the worker does."""
        from worker.db import unit_of_work
        from worker.intake import create_event
        from worker.models import Event
        from worker.processing import handle_message

        with unit_of_work(self.factory) as session:
            event, _ = create_event(session, self.brand_id, {"type": "PURCHASE", **body})
            event_id, message_id = event.id, event.queue_message_id
        outcome = handle_message(event_id, message_id, self.factory)
        if outcome != "RESOLVED":
            with unit_of_work(self.factory) as session:
                error = session.get_one(Event, event_id).error
            raise RuntimeError(f"bench event {event_id} ended {outcome}: {error}")
        return event_id

    def purchase(self, customer: uuid.UUID, lines: int = TARGET_LINES) -> uuid.UUID:
        """The bench's standard event: accumulations, a redemption of 150, a gift card."""
        far = datetime(2035, 1, 1, tzinfo=UTC)
        amounts = [50, 30, 20] if lines == TARGET_LINES else [10] * lines
        return self.record(
            {
                "customer_id": customer,
                "accumulate": [self.accumulation(a, far) for a in amounts],
                "redeem": [
                    {
                        "reward_id": str(self.points),
                        "amount": REDEEM,
                        "campaign_id": str(self.campaign),
                    }
                ],
                "gift_cards": [{"reward_id": str(self.card), "description": "bench card"}],
            }
        )

    def history(self, customer: uuid.UUID, lines: int) -> uuid.UUID:
        start = datetime(2031, 1, 1, tzinfo=UTC)
        return self.record(
            {
                "customer_id": customer,
                "accumulate": [
                    self.accumulation(100, start + timedelta(days=i)) for i in range(lines)
                ],
            }
        )

    def many_lines(self, lines: int) -> uuid.UUID:
        """An event of `lines` accumulation lines, for a new customer (the growth measure)."""
        far = datetime(2035, 1, 1, tzinfo=UTC)
        return self.record(
            {
                "customer_id": uuid.uuid4(),
                "accumulate": [self.accumulation(10, far) for _ in range(lines)],
            }
        )


@dataclass
class Template:
    customer: uuid.UUID
    targets: list[uuid.UUID]  # the K purchases, RESOLVED
    lines: int  # lines one clone adds to the ledger


def make_template(world: World, reversed_targets: int = 0) -> Template:
    """The template customer; `reversed_targets` of its purchases already reversed."""
    from worker.db import unit_of_work
    from worker.intake import request_reversal
    from worker.processing import handle_message

    customer = uuid.uuid4()
    world.history(customer, HISTORY_LINES)
    targets = [world.purchase(customer) for _ in range(PER_CUSTOMER)]
    for event_id in targets[len(targets) - reversed_targets :] if reversed_targets else []:
        with unit_of_work(world.factory) as session:
            message = request_reversal(session, world.brand_id, event_id, "history").event
            message_id = message.queue_message_id
        if handle_message(event_id, message_id, world.factory) != "REVERSED":
            raise RuntimeError(f"template reversal of {event_id} did not complete")
    live = targets[: len(targets) - reversed_targets]
    return Template(customer, live, HISTORY_LINES + TARGET_LINES * PER_CUSTOMER)


def _columns(engine: Engine, table: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT column_name, data_type, coalesce(identity_generation, '') "
                "FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = :t "
                "ORDER BY ordinal_position"
            ),
            {"t": table},
        ).all()
    return [(name, kind) for name, kind, generated in rows if generated != "ALWAYS"]


def _expression(table: str, column: str, kind: str) -> str:
    col = f't."{column}"'
    if kind == "uuid" and column not in SHARED:
        return f"md5({col}::text || ':' || g.n)::uuid"
    if (table, column) == ("gift_cards", "code"):
        return f"{col} || '-' || g.n"
    if (table, column) == ("events", "queue_message_id"):
        return f"md5({col} || ':' || g.n)"
    if (table, column) == ("events", "result_customer"):
        mapped = "to_jsonb(md5(t.customer_id::text || ':' || g.n)::uuid::text)"
        return f"jsonb_set({col}, '{{id}}', {mapped})"
    return col


def clone_statements(engine: Engine) -> list[str]:
    statements = []
    for table, where in TABLES:
        columns = _columns(engine, table)
        names = ", ".join(f'"{name}"' for name, _ in columns)
        values = ", ".join(_expression(table, name, kind) for name, kind in columns)
        # Identifiers come from information_schema and this module; values are bound.
        statement = f"INSERT INTO {table} ({names}) SELECT {values} FROM {table} t "  # noqa: S608 - see above
        statement += (
            "CROSS JOIN generate_series(CAST(:a AS int), CAST(:b AS int)) AS g(n) WHERE " + where
        )
        statements.append(statement)
    return statements


def clone(engine: Engine, template: Template, first: int, count: int, batch: int = 2000) -> None:
    """Clones first .. first+count-1 of the template customer, committed in batches."""
    statements = clone_statements(engine)
    with engine.connect() as conn:
        superuser = conn.execute(text("SHOW is_superuser")).scalar_one() == "on"
    for start in range(first, first + count, batch):
        end = min(first + count, start + batch) - 1
        with engine.begin() as conn:
            if superuser:
                # Loading only (as pg_restore --disable-triggers does): skips the per-row
                # foreign-key triggers of this transaction. The rows are copies of rows
                # that passed them, with every id mapped the same way; `check` runs the
                # ledger's invariants on clones before anything is measured.
                conn.execute(text("SET LOCAL session_replication_role = replica"))
            for statement in statements:
                conn.execute(text(statement), {"t": template.customer, "a": start, "b": end})


def targets(template: Template, clones: range) -> list[uuid.UUID]:
    """The purchases of these clones, one customer after another within each round.

    Consecutive requests are for different customers, as a refund batch's would be
    (two at once for one customer wait on that customer's wallet lock).
    """
    return [derive(target, n) for target in template.targets for n in clones]


def customers(template: Template, clones: range) -> list[uuid.UUID]:
    return [derive(template.customer, n) for n in clones]


def check(factory: Factory, customer_ids: list[uuid.UUID]) -> None:
    """SPEC §3's invariants on these customers (the clones are whole ledgers)."""
    from worker.db import unit_of_work
    from worker.ledger.invariants import assert_invariants

    with unit_of_work(factory) as session:
        for customer in customer_ids:
            assert_invariants(session, customer)


def count_lines(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM lines")).scalar_one())


def analyze(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
