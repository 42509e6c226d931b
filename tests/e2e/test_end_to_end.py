"""The whole service as a user runs it: a real uvicorn api and a real `celery worker`
process on the test PostgreSQL and Redis, driven over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from worker.db import unit_of_work
from worker.ledger.invariants import assert_invariants
from worker.procs import free_port, stop_group, wait_until

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
BASE = "/api/storefront/v1"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("e2e-logs")
    port = free_port()
    api = subprocess.Popen(
        [str(BIN / "reversals"), "api", "--port", str(port)],
        stdout=(logs / "api.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [str(BIN / "reversals"), "worker", "--concurrency", "2", "--loglevel", "warning"],
        stdout=(logs / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, "the api to answer")
        created = subprocess.run(
            [str(BIN / "reversals"), "brand", "create", "e2e brand", "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        key = json.loads(created.stdout.strip().splitlines()[-1])
        token = httpx.get(
            f"{base}{BASE}/auth/authorize", headers={"x-api-key": key["api_key"]}
        ).json()["data"]["access_token"]
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        reward, campaign = str(uuid.uuid4()), str(uuid.uuid4())
        assert (
            http.put(
                f"/api/admin/v1/rewards/{reward}",
                json={"type": "POINTS", "name": "Points", "cost": 0.01},
            ).status_code
            == 200
        )
        assert (
            http.put(
                f"/api/admin/v1/campaigns/{campaign}",
                json={"name": "Spring", "funded_by": "MARKETING"},
            ).status_code
            == 200
        )
        yield {
            "http": http,
            "reward": reward,
            "campaign": campaign,
            "brand": key["brand_id"],
            "logs": logs,
            "worker": worker,
        }
        http.close()
    finally:
        stop_group(api)
        stop_group(worker)


def _wait_status(http: httpx.Client, event_id: str, status: str, timeout: float = 30) -> Any:
    def reached() -> Any:
        data = http.get(f"{BASE}/behavior/events/{event_id}").json()["data"]
        return data if data["status"] == status else None

    return wait_until(reached, timeout, f"event {event_id} to become {status}")


def _balance(http: httpx.Client, customer: str) -> int:
    data = http.get(f"{BASE}/customers/{customer}/wallet").json()["data"]
    return sum(b["balance"] for b in data["balances"])


def test_purchase_then_reversal_over_http_with_a_real_worker(service: dict[str, Any]) -> None:
    http, reward, campaign = service["http"], service["reward"], service["campaign"]
    customer = str(uuid.uuid4())
    earlier = http.post(
        f"{BASE}/behavior/events",
        json={
            "customer_id": customer,
            "type": "PURCHASE",
            "accumulate": [
                {
                    "reward_id": reward,
                    "campaign_id": campaign,
                    "amount": 300,
                    "expiration_date": "2030-06-30T00:00:00Z",
                },
                {
                    "reward_id": reward,
                    "campaign_id": campaign,
                    "amount": 200,
                    "expiration_date": "2030-01-31T00:00:00Z",
                },
            ],
        },
    )
    assert earlier.status_code == 202, earlier.text
    _wait_status(http, earlier.json()["data"]["id"], "RESOLVED")
    before = _balance(http, customer)
    assert before == 500

    purchase = http.post(
        f"{BASE}/behavior/events",
        json={
            "customer_id": customer,
            "type": "PURCHASE",
            "data": {"order": "A-1001"},
            "accumulate": [
                {"reward_id": reward, "campaign_id": campaign, "amount": 120},
                {"reward_id": reward, "campaign_id": campaign, "amount": 30},
            ],
            "redeem": [{"reward_id": reward, "amount": 250}],
        },
    )
    assert purchase.status_code == 202, purchase.text
    event = purchase.json()["data"]
    assert event["status"] == "PENDING" and event["queue_message_id"]
    resolved = _wait_status(http, event["id"], "RESOLVED")
    assert _balance(http, customer) == 500 + 150 - 250
    redeemed = sorted(
        (r["expiration_date"], r["amount"]) for r in resolved["result"]["redemptions"]
    )
    assert redeemed == [("2030-01-31T00:00:00Z", 200), ("2030-06-30T00:00:00Z", 50)]

    answer = http.post(
        f"{BASE}/behavior/events/{event['id']}/reverse", json={"reason": "order refunded"}
    )
    assert answer.status_code == 202, answer.text
    accepted = answer.json()["data"]
    assert accepted["status"] == "PENDING"
    assert (
        accepted["queue_message_id"] and accepted["queue_message_id"] != event["queue_message_id"]
    )
    assert accepted["reversal"]["status"] == "PENDING"

    done = _wait_status(http, event["id"], "REVERSED")
    assert done["reversed_at"] and done["reversed_at"].endswith("Z")
    reversals = [t for t in done["result"]["transactions"] if t["type"] == "REVERSAL"]
    assert sorted(t["amount"] for t in reversals) == [-120, -30, 50, 200]
    assert all(
        t["attributes"]["line"] and t["attributes"]["campaign_name"] == "Spring"
        for t in reversals
        if t["amount"] < 0
    )
    assert _balance(http, customer) == before

    again = http.post(f"{BASE}/behavior/events/{event['id']}/reverse", json={"reason": "again"})
    assert again.status_code == 200
    assert again.json()["data"]["queue_message_id"] == accepted["queue_message_id"]
    with unit_of_work() as session:
        assert_invariants(session, uuid.UUID(customer))


def test_a_burst_of_reversals_all_end_reversed_exactly_once(service: dict[str, Any]) -> None:
    http, reward, campaign = service["http"], service["reward"], service["campaign"]
    customers = [str(uuid.uuid4()) for _ in range(5)]
    events = []
    for i in range(40):
        customer = customers[i % len(customers)]
        answer = http.post(
            f"{BASE}/behavior/events",
            json={
                "customer_id": customer,
                "accumulate": [{"reward_id": reward, "campaign_id": campaign, "amount": 10 + i}],
            },
        )
        assert answer.status_code == 202
        events.append(answer.json()["data"]["id"])
    for event_id in events:
        _wait_status(http, event_id, "RESOLVED")
    for event_id in events:
        answer = http.post(f"{BASE}/behavior/events/{event_id}/reverse", json={"reason": "fraud"})
        assert answer.status_code == 202
    for event_id in events:
        done = _wait_status(http, event_id, "REVERSED")
        assert [t["type"] for t in done["result"]["transactions"]] == ["ACCUMULATION", "REVERSAL"]
    assert all(_balance(http, c) == 0 for c in customers)
    with unit_of_work() as session:
        for customer in customers:
            assert_invariants(session, uuid.UUID(customer))


def test_a_lost_publish_is_finished_by_the_sweeper(service: dict[str, Any]) -> None:
    """The row is committed but its message never reaches Redis: the sweeper sends it."""
    from worker.intake import create_event
    from worker.models import Event
    from worker.sweeper import sweep

    http, reward, campaign = service["http"], service["reward"], service["campaign"]
    customer = uuid.uuid4()
    with unit_of_work() as session:
        event, _ = create_event(
            session,
            uuid.UUID(service["brand"]),
            {
                "customer_id": customer,
                "accumulate": [{"reward_id": reward, "campaign_id": campaign, "amount": 7}],
            },
        )
        event_id = event.id
        session.info.clear()  # drop the after-commit publish: the message is "lost"
    time.sleep(1.2)
    assert http.get(f"{BASE}/behavior/events/{event_id}").json()["data"]["status"] == "PENDING"
    assert sweep(lease_seconds=1) >= 1
    _wait_status(http, str(event_id), "RESOLVED")
    with unit_of_work() as session:
        assert session.get_one(Event, event_id).attempts == 1
        assert_invariants(session, customer)


def test_the_messages_of_a_backlog_taken_along_are_revoked(service: dict[str, Any]) -> None:
    """Reversals accepted together wait as a backlog: the delivery that takes them along
    has the worker drop their own messages unopened (worker.tasks.revoke_taken)."""
    from worker.celery_app import app
    from worker.intake import request_reversal

    http, reward, campaign = service["http"], service["reward"], service["campaign"]
    customer = str(uuid.uuid4())
    events = []
    for amount in range(10, 30):
        answer = http.post(
            f"{BASE}/behavior/events",
            json={
                "customer_id": customer,
                "accumulate": [{"reward_id": reward, "campaign_id": campaign, "amount": amount}],
            },
        )
        assert answer.status_code == 202
        events.append(answer.json()["data"]["id"])
    for event_id in events:
        _wait_status(http, event_id, "RESOLVED")
    # Accepted in one transaction: every message is published at its commit.
    with unit_of_work() as session:
        messages = [
            request_reversal(
                session, uuid.UUID(service["brand"]), uuid.UUID(e), "refund"
            ).event.queue_message_id
            for e in events
        ]
    for event_id in events:
        _wait_status(http, event_id, "REVERSED")
    revoked = app.control.inspect(timeout=5).revoked() or {}  # by worker
    assert set(messages) & set().union(*revoked.values()), revoked
    assert _balance(http, customer) == 0
    with unit_of_work() as session:
        assert_invariants(session, uuid.UUID(customer))
