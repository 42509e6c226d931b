"""`reversals seed`: a realistic data set, made by the same code a real one goes through.

Per brand: a tier table and a shortfall policy (they cycle negative, clamp, fail
across brands), a reward catalogue (POINTS, a DISCOUNT coupon, a GIFT_CARD, a
PRODUCT), campaigns funded by marketing, a partner and the stores, channels,
stores and customers. Then a history of events over the last `--days`: purchases
earning points on one to three lines, coupons, gift cards, redemptions spending
points earned by earlier events (so they cross lines), reservations, and a few
redemptions asking for more than the customer has (FAILED, as in life). Finally a
share of the resolved events is reversed.

Every event is recorded by worker.intake.create_event and applied by
worker.processing.handle_message, the functions behind the api and the worker,
in their own transactions: the ledger it builds is one the service could have
built. The seed applies each message itself, so it publishes nothing to the broker.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy.orm import Session

from worker.db import AFTER_COMMIT_KEY, unit_of_work

POLICIES = ("negative", "clamp", "fail")
TIERS = [
    {"name": "BRONZE", "min_points": 0},
    {"name": "SILVER", "min_points": 1000},
    {"name": "GOLD", "min_points": 5000},
]
REWARDS = (
    ("POINTS", "Points", "0.01"),
    ("DISCOUNT", "10% off coupon", "0"),
    ("GIFT_CARD", "Gift card 10", "10"),
    ("PRODUCT", "Free coffee", "2.5"),
)
CAMPAIGNS = (
    ("Everyday points", "MARKETING"),
    ("Double points weekend", "MARKETING"),
    ("Partner promo", "PARTNER"),
    ("Store opening", "STORE"),
)
BRAND_NAMES = ("Acme Coffee", "Northwind Books", "Blue Bottle Bikes", "Lumen Beauty", "Orbit Foods")


@dataclass
class SeededBrand:
    id: uuid.UUID
    name: str
    api_key: str
    policy: str
    rewards: dict[str, uuid.UUID]
    campaigns: list[uuid.UUID]
    channels: list[uuid.UUID]
    stores: list[uuid.UUID]
    customers: list[uuid.UUID] = field(default_factory=list)


@dataclass
class SeedReport:
    brands: list[SeededBrand] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    reversals: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "brands": [
                {"brand_id": str(b.id), "name": b.name, "api_key": b.api_key, "shortfall": b.policy}
                for b in self.brands
            ],
            "customers": sum(len(b.customers) for b in self.brands),
            "events": dict(self.events),
            "reversals": dict(self.reversals),
        }


def _quiet(session: Session) -> None:
    """Drop the publishes intake registered: the seed applies the messages itself."""
    session.info.pop(AFTER_COMMIT_KEY, None)


def make_brand(index: int, customers: int) -> SeededBrand:
    from api_stub.auth import create_brand
    from worker.models import Campaign, Customer, Reward

    policy = POLICIES[index % len(POLICIES)]
    name = BRAND_NAMES[index % len(BRAND_NAMES)]
    if index >= len(BRAND_NAMES):
        name = f"{name} {index // len(BRAND_NAMES) + 1}"
    with unit_of_work() as session:
        brand, key = create_brand(session, name, {"shortfall": policy, "tiers": TIERS})
        rewards = {kind: uuid.uuid4() for kind, _, _ in REWARDS}
        for kind, label, cost in REWARDS:
            session.add(
                Reward(id=rewards[kind], brand_id=brand.id, type=kind, name=label, cost=cost)
            )
        campaigns = [uuid.uuid4() for _ in CAMPAIGNS]
        for campaign_id, (label, funded_by) in zip(campaigns, CAMPAIGNS, strict=True):
            session.add(
                Campaign(id=campaign_id, brand_id=brand.id, name=label, funded_by=funded_by)
            )
        seeded = SeededBrand(
            id=brand.id,
            name=name,
            api_key=key,
            policy=policy,
            rewards=rewards,
            campaigns=campaigns,
            channels=[uuid.uuid4() for _ in range(3)],
            stores=[uuid.uuid4() for _ in range(5)],
        )
        session.flush()
        for _ in range(customers):
            customer_id = uuid.uuid4()
            session.add(Customer(id=customer_id, brand_id=brand.id))
            seeded.customers.append(customer_id)
    return seeded


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class Wallets:
    """What each customer can spend, as the seed has made it so far."""

    points: Counter[uuid.UUID] = field(default_factory=Counter)
    coupons: Counter[uuid.UUID] = field(default_factory=Counter)


def event_body(
    brand: SeededBrand, wallets: Wallets, issued_at: datetime, rng: random.Random
) -> dict[str, Any]:
    """One purchase as the platform upstream decided it."""
    customer = rng.choice(brand.customers)
    points, coupon = str(brand.rewards["POINTS"]), str(brand.rewards["DISCOUNT"])
    reserved = rng.random() < 0.04
    body: dict[str, Any] = {
        "customer_id": customer,
        "type": "PURCHASE",
        "data": {"order": f"ORD-{rng.randrange(10**8):08d}", "total": rng.randrange(5, 400)},
        "issued_at": issued_at,
        "channel_id": rng.choice(brand.channels),
        "store_id": rng.choice(brand.stores),
        "fulfilled": not reserved,
        "accumulate": [],
        "redeem": [],
        "gift_cards": [],
    }
    if reserved:
        body["reserve"] = rng.choice((3, 7, 14))
    for _ in range(rng.choice((1, 1, 2, 3))):
        expiry = rng.choice(
            (None, issued_at + timedelta(days=365), issued_at + timedelta(days=540))
        )
        body["accumulate"].append(
            {
                "reward_id": points,
                "campaign_id": str(rng.choice(brand.campaigns)),
                "amount": rng.randrange(10, 400),
                "expiration_date": _iso(expiry) if expiry else None,
            }
        )
    if rng.random() < 0.1:
        body["accumulate"].append(
            {"reward_id": coupon, "campaign_id": str(brand.campaigns[1]), "amount": 1}
        )
    if reserved:
        return body  # a reservation only earns, pending; spending it is left to fulfilment
    if wallets.points[customer] > 0 and rng.random() < 0.3:
        wanted = rng.randrange(1, wallets.points[customer] + 1)
        if rng.random() < 0.03:
            wanted = wallets.points[customer] + rng.randrange(1, 100)  # refused: FAILED
        body["redeem"].append({"reward_id": points, "amount": wanted})
    if wallets.coupons[customer] > 0 and rng.random() < 0.5:
        body["redeem"].append({"reward_id": coupon, "amount": 1})
    if rng.random() < 0.05:
        body["gift_cards"].append(
            {
                "reward_id": str(brand.rewards["GIFT_CARD"]),
                "description": "Gift card 10",
                "expired_at": _iso(issued_at + timedelta(days=365)),
            }
        )
    return body


def _spent(body: dict[str, Any], brand: SeededBrand, wallets: Wallets) -> None:
    """Follow what a RESOLVED event did to the customer's spendable balances."""
    if not body["fulfilled"]:
        return
    customer = body["customer_id"]
    points = str(brand.rewards["POINTS"])
    for item in body["accumulate"]:
        target = wallets.points if item["reward_id"] == points else wallets.coupons
        target[customer] += item["amount"]
    for item in body["redeem"]:
        target = wallets.points if item["reward_id"] == points else wallets.coupons
        target[customer] -= item["amount"]


def record_and_apply(brand: SeededBrand, body: dict[str, Any]) -> tuple[uuid.UUID, str]:
    from worker.intake import create_event
    from worker.processing import handle_message

    with unit_of_work() as session:
        event, _ = create_event(session, brand.id, body)
        event_id, message_id = event.id, event.queue_message_id
        _quiet(session)
    return event_id, handle_message(event_id, message_id)


def reverse_and_apply(brand: SeededBrand, event_id: uuid.UUID, reason: str) -> str:
    from worker.intake import request_reversal
    from worker.processing import handle_message

    with unit_of_work() as session:
        answer = request_reversal(session, brand.id, event_id, reason)
        message_id = answer.event.queue_message_id
        _quiet(session)
    # Alone: the report counts each event's own outcome, and an event taken along by
    # another delivery would come back IGNORED here.
    return handle_message(event_id, message_id, take=0)


REASONS = ("order refunded", "order cancelled", "fraud", "duplicate order", "chargeback")


def seed_brand(
    index: int,
    *,
    customers: int,
    events: int,
    reversed_share: float,
    days: int,
    rng: random.Random,
    tick: Callable[[int], Any],
) -> SeedReport:
    report = SeedReport()
    brand = make_brand(index, customers)
    report.brands.append(brand)
    tick(1)
    wallets = Wallets()
    now = datetime.now(UTC)
    moments = sorted(now - timedelta(seconds=rng.uniform(60, days * 86400)) for _ in range(events))
    resolved: list[uuid.UUID] = []
    for issued_at in moments:
        body = event_body(brand, wallets, issued_at, rng)
        event_id, outcome = record_and_apply(brand, body)
        report.events[outcome] += 1
        if outcome == "RESOLVED":
            _spent(body, brand, wallets)
            resolved.append(event_id)
        tick(1)
    for event_id in rng.sample(resolved, round(len(resolved) * reversed_share)):
        report.reversals[reverse_and_apply(brand, event_id, rng.choice(REASONS))] += 1
        tick(1)
    return report


def seed(
    *,
    brands: int,
    customers: int,
    events: int,
    reversed_share: float,
    days: int,
    random_seed: int | None = None,
    jobs: int = 1,
    progress: Callable[[int], Any] | None = None,
) -> SeedReport:
    """Build the data set; `progress(advance)` is called once per brand, event, reversal.

    Brands are independent (no row of one is touched by another), so `jobs` threads
    seed them side by side, each in its own transactions. Each brand draws from its
    own random stream, so a `random_seed` gives the same data set whatever `jobs` is.
    """
    base = random.Random(random_seed)  # noqa: S311 - test data, not secrets
    streams = [random.Random(base.getrandbits(64)) for _ in range(brands)]  # noqa: S311 - same
    tick = progress or (lambda _: None)
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="seed") as pool:
        parts = list(
            pool.map(
                lambda index: seed_brand(
                    index,
                    customers=customers,
                    events=events,
                    reversed_share=reversed_share,
                    days=days,
                    rng=streams[index],
                    tick=tick,
                ),
                range(brands),
            )
        )
    report = SeedReport()
    for part in parts:
        report.brands += part.brands
        report.events.update(part.events)
        report.reversals.update(part.reversals)
    return report


def check_invariants(report: SeedReport) -> None:
    from worker.ledger.invariants import assert_invariants

    with unit_of_work() as session:
        for brand in report.brands:
            for customer in brand.customers:
                assert_invariants(session, customer)


@click.command("seed")
@click.option("--brands", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option(
    "--customers", type=click.IntRange(1), default=200, show_default=True, help="per brand"
)
@click.option("--events", type=click.IntRange(0), default=2000, show_default=True, help="per brand")
@click.option(
    "--reversed",
    "reversed_share",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="share of the resolved events then reversed",
)
@click.option("--days", type=click.IntRange(1), default=180, show_default=True, help="history")
@click.option(
    "--random-seed", type=int, default=None, help="the same choices again (the ids are new)"
)
@click.option(
    "--jobs", "-j", type=click.IntRange(1, 32), default=4, show_default=True, help="brands at once"
)
@click.option("--check/--no-check", default=True, show_default=True, help="SPEC §3 invariants")
@click.option("--json", "as_json", is_flag=True, help="print the brands, keys and counts as JSON")
def seed_command(
    *,
    brands: int,
    customers: int,
    events: int,
    reversed_share: float,
    days: int,
    random_seed: int | None,
    jobs: int,
    check: bool,
    as_json: bool,
) -> None:
    """Make a realistic data set: brands, catalogue, customers, a history of events."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from worker.cli import _urls
    from worker.logs import configure

    _urls()
    configure("WARNING")  # the bar shows progress; a line per event would drown it
    # Reversals are a share of resolved events: the total is known once they are.
    expected = brands * (1 + events + round(events * reversed_share))
    errors = Console(stderr=True)
    columns = (
        TextColumn("[bold]seeding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=errors) as bar:
        task = bar.add_task("seed", total=expected)
        report = seed(
            brands=brands,
            customers=customers,
            events=events,
            reversed_share=reversed_share,
            days=days,
            random_seed=random_seed,
            jobs=min(jobs, brands),
            progress=lambda n: bar.advance(task, n),
        )
        bar.update(task, total=bar.tasks[0].completed)
    if check:
        check_invariants(report)
    summary = report.as_json()
    if as_json:
        click.echo(json.dumps(summary))
        return
    out = Console()
    out.print("[bold]brands[/bold] (their API keys are shown once: keep them)")
    for brand in summary["brands"]:
        # Plain lines, never cut to the terminal's width: the keys must be copied whole.
        click.echo(
            f"{brand['brand_id']}  {brand['api_key']}  {brand['shortfall']:<8}  {brand['name']}"
        )
    counts = Table(title="what the seed made")
    counts.add_column("what")
    counts.add_column("count", justify="right")
    counts.add_row("customers", str(summary["customers"]))
    for outcome, count in sorted(report.events.items()):
        counts.add_row(f"events {outcome}", str(count))
    for outcome, count in sorted(report.reversals.items()):
        counts.add_row(f"reversals {outcome}", str(count))
    out.print(counts)
    if check:
        out.print("SPEC §3 invariants hold for every seeded customer.")
