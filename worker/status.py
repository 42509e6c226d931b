"""What an operator asks first: how deep is the queue, what state are the events in,
are there dead letters, how long has the oldest request waited.

`reversals status` prints it; the worker's metrics endpoint (worker.metrics) serves
the same numbers as gauges, read from PostgreSQL and Redis at scrape time, so every
worker reports the same truth whichever one Prometheus asks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import click
from sqlalchemy import text
from sqlalchemy.orm import Session

from worker.models import EventStatus, ReversalStatus

# Kombu's Redis transport keeps a queue's messages of priority p > 0 under
# "<queue>\x06\x16<p>" (steps 0, 3, 6, 9); without priorities only the bare key is used.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
UNACKED_KEY = "unacked"
# A status read must never hang a scrape or a terminal: a slow count gives up.
STATEMENT_TIMEOUT_MS = 5000


@dataclass
class LedgerStatus:
    events: dict[str, int] = field(default_factory=dict)
    reversals: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    dead_letters_unreplayed: int = 0
    oldest_pending_event_id: str | None = None
    oldest_pending_seconds: float | None = None


@dataclass
class BrokerStatus:
    queue: str
    queue_depth: int | None = None
    unacked: int | None = None
    error: str | None = None


IN_FLIGHT = ("PENDING", "PROCESSING")


def read_ledger(session: Session, full: bool = True) -> LedgerStatus:
    """Counts from PostgreSQL, in the caller's transaction.

    `full` counts every event by status: one scan of the events table. Without it
    only the in-flight statuses are counted (the other counts stay 0), through the
    partial index ix_events_in_flight, which costs next to nothing at any size.
    """
    session.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
    status = LedgerStatus(
        events={s.value: 0 for s in EventStatus},
        reversals={s.value: 0 for s in ReversalStatus},
    )
    # A reversal in flight is an event in flight: the one scan counts both.
    where = "" if full else " WHERE status IN ('PENDING', 'PROCESSING')"
    counts = session.execute(
        text(f"SELECT status, reversal_status, count(*) FROM events{where} GROUP BY 1, 2")  # noqa: S608 - a constant
    )
    for event_status, reversal_status, count in counts:
        status.events[event_status] = status.events.get(event_status, 0) + int(count)
        if reversal_status is not None:
            status.reversals[reversal_status] = status.reversals.get(reversal_status, 0) + int(
                count
            )
    total, unreplayed = session.execute(
        text("SELECT count(*), count(*) FILTER (WHERE replayed_at IS NULL) FROM dead_letters")
    ).one()
    status.dead_letters, status.dead_letters_unreplayed = int(total), int(unreplayed)
    # The status filter matches ix_events_in_flight, so this reads only in-flight rows.
    # A request waits since it was made: a reversal since its request, an event since intake.
    oldest = session.execute(
        text(
            "SELECT id, extract(epoch FROM now() - coalesce(reversal_requested_at, created_at))"
            " FROM events WHERE status IN ('PENDING', 'PROCESSING')"
            " ORDER BY coalesce(reversal_requested_at, created_at) LIMIT 1"
        )
    ).first()
    if oldest is not None:
        status.oldest_pending_event_id = str(oldest[0])
        status.oldest_pending_seconds = max(0.0, float(oldest[1]))
    return status


def read_broker(broker_url: str, queue: str) -> BrokerStatus:
    """Messages waiting in the queue (LLEN) and taken but not yet acknowledged."""
    import redis

    status = BrokerStatus(queue=queue)
    client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            for step in PRIORITY_STEPS:
                pipe.llen(f"{queue}{PRIORITY_SEPARATOR}{step}")
            pipe.hlen(UNACKED_KEY)
            *depths, unacked = pipe.execute()
        status.queue_depth = sum(int(d) for d in depths)
        status.unacked = int(unacked)
    except redis.RedisError as exc:
        status.error = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return status


def snapshot() -> dict[str, Any]:
    from worker.db import unit_of_work
    from worker.settings import get_settings

    settings = get_settings()
    with unit_of_work() as session:
        ledger = read_ledger(session)
    broker = read_broker(settings.broker_url, settings.queue)
    return {"broker": asdict(broker), "ledger": asdict(ledger)}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def render(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    broker, ledger = data["broker"], data["ledger"]
    table = Table(title=f"reversals status ({datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z})")
    table.add_column("what")
    table.add_column("value", justify="right")
    depth = broker["queue_depth"]
    table.add_row(
        f"queue depth ({broker['queue']})",
        str(depth) if depth is not None else f"unavailable: {broker['error']}",
    )
    if broker["unacked"] is not None:
        table.add_row("messages taken, not yet acked", str(broker["unacked"]))
    table.add_section()
    for name, count in ledger["events"].items():
        table.add_row(f"events {name}", str(count))
    table.add_section()
    for name, count in ledger["reversals"].items():
        table.add_row(f"reversals {name}", str(count))
    table.add_section()
    table.add_row("dead letters (not replayed)", str(ledger["dead_letters_unreplayed"]))
    table.add_row("dead letters (all)", str(ledger["dead_letters"]))
    oldest = ledger["oldest_pending_event_id"]
    table.add_row(
        "oldest pending request",
        f"{_age(ledger['oldest_pending_seconds'])} ({oldest})" if oldest else "none",
    )
    Console().print(table)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the numbers as one JSON object")
def status(as_json: bool) -> None:
    """Queue depth, events by status, dead letters and the oldest pending request."""
    from worker.cli import _urls

    _urls()
    data = snapshot()
    if as_json:
        click.echo(json.dumps(data))
    else:
        render(data)
