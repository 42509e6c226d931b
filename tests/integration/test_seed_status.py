"""`reversals seed` and `reversals status`, run as a user runs them (click, in process),
on the run's committed database and Redis."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from click.testing import CliRunner
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from api_stub.auth import find_key
from tests.support import World
from worker.cli import main
from worker.db import get_sessionmaker, unit_of_work
from worker.ledger.invariants import assert_invariants
from worker.ledger.wallet import utcnow
from worker.metrics import LedgerCollector
from worker.models import (
    Allocation,
    Brand,
    Campaign,
    Customer,
    DeadLetter,
    Event,
    GiftCard,
    Line,
    Redemption,
    Reward,
    Transaction,
)
from worker.settings import get_settings
from worker.status import PRIORITY_SEPARATOR, read_broker, read_ledger


def _status() -> dict[str, Any]:
    result = CliRunner().invoke(main, ["status", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _by_status(session: Session, brands: list[uuid.UUID], column: Any) -> Counter[str]:
    rows = session.execute(
        select(column, func.count())
        .where(Event.brand_id.in_(brands), column.is_not(None))
        .group_by(column)
    )
    return Counter({str(name): int(count) for name, count in rows})


def test_seed_builds_a_realistic_ledger_and_status_reports_it() -> None:
    before = _status()
    result = CliRunner().invoke(
        main,
        [
            "seed",
            "--brands", "2",
            "--customers", "6",
            "--events", "40",
            "--reversed", "0.3",
            "--random-seed", "11",
            "--json",
        ],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "seeding" in result.stderr  # the progress bar, kept off stdout
    brands = [uuid.UUID(b["brand_id"]) for b in report["brands"]]
    assert len(set(brands)) == 2 and report["customers"] == 12
    assert sum(report["events"].values()) == 80
    # About 30% of each brand's resolved events (rounded per brand).
    reversals = sum(report["reversals"].values())
    assert abs(reversals - 0.3 * report["events"]["RESOLVED"]) <= 1

    with unit_of_work() as session:
        for brand in report["brands"]:
            key = find_key(session, brand["api_key"])
            assert key.brand_id == uuid.UUID(brand["brand_id"])
            settings = session.get_one(Brand, key.brand_id).settings
            assert settings["shortfall"] == brand["shortfall"] and settings["tiers"]
        in_brands = Event.brand_id.in_(brands)
        assert session.scalar(select(func.count()).where(Customer.brand_id.in_(brands))) == 12
        assert session.scalar(select(func.count()).select_from(Event).where(in_brands)) == 80
        kinds = set(session.scalars(select(Reward.type).where(Reward.brand_id.in_(brands))))
        assert kinds == {"POINTS", "DISCOUNT", "GIFT_CARD", "PRODUCT"}
        funders = set(
            session.scalars(select(Campaign.funded_by).where(Campaign.brand_id.in_(brands)))
        )
        assert {"MARKETING", "PARTNER", "STORE"} <= funders

        # What the seed says it did is what the ledger holds.
        statuses = _by_status(session, brands, Event.status)
        outcomes = _by_status(session, brands, Event.reversal_status)
        assert outcomes == Counter(report["reversals"])
        assert statuses["REVERSED"] == report["reversals"].get("REVERSED", 0)
        assert statuses["CANCELLED"] == report["reversals"].get("CANCELLED", 0)
        assert statuses["FAILED"] == report["events"].get("FAILED", 0) + report["reversals"].get(
            "FAILED", 0
        )

        # History: events on several lines, redemptions taking from earlier events'
        # lines, gift cards, REVERSAL transactions.
        lines_per_event = session.execute(
            select(Line.event_id, func.count())
            .where(Line.brand_id.in_(brands))
            .group_by(Line.event_id)
        ).all()
        assert max(count for _, count in lines_per_event) >= 2
        crossing = session.scalar(
            select(func.count())
            .select_from(Allocation)
            .join(Redemption, Redemption.id == Allocation.redemption_id)
            .join(Line, Line.id == Allocation.line_id)
            .where(Line.brand_id.in_(brands), Line.event_id != Redemption.event_id)
        )
        assert crossing and crossing > 0
        types = set(
            session.scalars(select(Transaction.type).where(Transaction.brand_id.in_(brands)))
        )
        assert {"ACCUMULATION", "REDEMPTION", "REVERSAL"} <= types
        assert session.scalar(
            select(func.count()).select_from(GiftCard).where(GiftCard.brand_id.in_(brands))
        )
        for customer in session.scalars(select(Customer.id).where(Customer.brand_id.in_(brands))):
            assert_invariants(session, customer)

    after = _status()
    # The seed applies its messages itself: nothing reaches the queue.
    assert after["broker"]["queue_depth"] == before["broker"]["queue_depth"]
    moved = Counter(after["ledger"]["events"])
    moved.subtract(before["ledger"]["events"])
    assert +moved == +statuses
    moved = Counter(after["ledger"]["reversals"])
    moved.subtract(before["ledger"]["reversals"])
    assert +moved == +outcomes


def test_status_prints_a_table() -> None:
    result = CliRunner().invoke(main, ["status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for row in ("queue depth", "events REVERSED", "dead letters", "oldest pending request"):
        assert row in result.stdout


def test_queue_depth_counts_every_priority_of_the_queue() -> None:
    url = get_settings().broker_url
    queue = f"status-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    try:
        client.lpush(queue, "a", "b", "c")
        client.lpush(f"{queue}{PRIORITY_SEPARATOR}6", "d")
        client.lpush(f"{queue}-other", "not ours")
        assert read_broker(url, queue).queue_depth == 4
    finally:
        client.delete(queue, f"{queue}{PRIORITY_SEPARATOR}6", f"{queue}-other")
        client.close()
    down = read_broker("redis://127.0.0.1:1/0", queue)
    assert down.queue_depth is None and down.error


def test_oldest_pending_and_dead_letters(db_factory: Callable[[], Session], world: World) -> None:
    with unit_of_work(db_factory) as session:
        before = read_ledger(session)
    waiting = world.submit(uuid.uuid4(), accumulate=[5])
    with unit_of_work(db_factory) as session:
        # Older than anything else in flight in this database: the oldest request.
        session.execute(
            update(Event).where(Event.id == waiting).values(created_at=utcnow() - timedelta(days=3))
        )
        now = utcnow()
        session.add(
            DeadLetter(
                task_name="reversals.reverse_event",
                payload={},
                error="boom",
                attempts=1,
                first_failed_at=now,
                last_failed_at=now,
            )
        )
        session.flush()
        ledger = read_ledger(session)
        assert session.execute(text("SHOW statement_timeout")).scalar() == "5s"
    assert ledger.oldest_pending_event_id == str(waiting)
    assert ledger.oldest_pending_seconds is not None
    assert 3 * 86400 - 60 < ledger.oldest_pending_seconds < 3 * 86400 + 600
    assert ledger.events["PENDING"] == before.events["PENDING"] + 1
    assert ledger.dead_letters_unreplayed == before.dead_letters_unreplayed + 1


def _gauges(collector: LedgerCollector, name: str) -> dict[str, float]:
    for family in collector.collect():
        if family.name == name:
            return {sample.labels["status"]: sample.value for sample in family.samples}
    raise AssertionError(f"{name} not collected")


def test_the_worker_gauges_count_in_flight_exactly_and_the_rest_every_interval() -> None:
    settings = get_settings()
    cached = LedgerCollector(settings.model_copy(update={"worker_metrics_count_interval": 3600}))
    exact = LedgerCollector(settings.model_copy(update={"worker_metrics_count_interval": 0}))
    first, first_exact = _gauges(cached, "reversals_events"), _gauges(exact, "reversals_events")
    assert first == first_exact

    world = World.create(get_sessionmaker())
    event_id = world.submit(uuid.uuid4(), accumulate=[10])
    assert _gauges(cached, "reversals_events")["PENDING"] == first["PENDING"] + 1
    assert world.deliver(event_id) == "RESOLVED"
    counted = _gauges(cached, "reversals_events")
    assert counted["PENDING"] == first["PENDING"]
    assert counted["RESOLVED"] == first["RESOLVED"]  # until the next full count
    assert _gauges(exact, "reversals_events")["RESOLVED"] == first["RESOLVED"] + 1
