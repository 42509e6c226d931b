"""What an operator scrapes and reads, from a real `reversals api` and `reversals worker`.

- Prometheus: the api's /metrics and the worker's metrics port, scraped before and
  after a reversal made over HTTP; the counters moved by exactly what it did, and
  the route label is the route's template. Every metric the alert rules and the
  Grafana dashboard in ops/ name is one these endpoints serve.
- Logs: every line both processes wrote is one JSON object; the lines of the
  reversal's requests and of its task carry event_id, brand_id, queue_message_id and
  attempt; and neither the API key, nor a token, nor JWT_SECRET appears anywhere.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the lock
from prometheus_client.parser import text_string_to_metric_families

from api_stub.auth import create_brand
from tests.e2e.test_flower import start
from worker.celery_app import app as celery_app
from worker.db import unit_of_work
from worker.procs import free_port, stop_group, wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BASE = "/api/storefront/v1"
REVERSE_ROUTE = f"{BASE}/behavior/events/{{event_id}}/reverse"
REVERSE_TASK = "reversals.reverse_event"
READ_ROUTE = f"{BASE}/behavior/events/{{event_id}}"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("observability")
    api_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "LOG_LEVEL": "DEBUG",
        "WORKER_METRICS_PORT": str(metrics_port),
        "WORKER_METRICS_COUNT_INTERVAL": "0",  # every scrape counts every status
    }
    api = start(["api", "--port", str(api_port)], logs / "api.log", env)
    worker = start(
        ["worker", "--concurrency", "2", "--loglevel", "debug"], logs / "worker.log", env
    )
    urls = {
        "api": f"http://127.0.0.1:{api_port}",
        "worker_metrics": f"http://127.0.0.1:{metrics_port}/metrics",
    }
    try:

        def answers(url: str) -> bool:
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(lambda: answers(f"{urls['api']}/healthz"), 30, "the api")
        wait_until(lambda: answers(urls["worker_metrics"]), 40, "the worker's metrics")
        yield {"urls": urls, "logs": logs, "processes": (api, worker)}
    finally:
        stop_group(api)
        stop_group(worker)


@pytest.fixture(scope="module")
def reversal(stack: dict[str, Any]) -> dict[str, Any]:
    """One reversal over HTTP, with the metrics scraped before and after it."""
    urls = stack["urls"]
    with unit_of_work() as session:
        brand, api_key = create_brand(session, "observed brand")
        brand_id = str(brand.id)
    http = httpx.Client(base_url=urls["api"], timeout=10)
    # Requests whose headers hold secrets, on the paths that refuse them too.
    assert (
        http.get(f"{BASE}/auth/authorize", headers={"x-api-key": api_key + "x"}).status_code == 401
    )
    token = http.get(f"{BASE}/auth/authorize", headers={"x-api-key": api_key}).json()["data"][
        "access_token"
    ]
    auth = {"Authorization": f"Bearer {token}"}
    forged = {"Authorization": f"Bearer {token[:-4]}AAAA"}
    assert http.get(f"{BASE}/behavior/events/{uuid.uuid4()}", headers=forged).status_code == 401
    body = {"customer_id": str(uuid.uuid4()), "x-api-key": api_key, "token": token}
    assert http.post(f"{BASE}/behavior/events", json=body, headers=auth).status_code == 422
    reward, campaign = str(uuid.uuid4()), str(uuid.uuid4())
    reward_body = {"type": "POINTS", "name": "Points", "cost": 0.01}
    assert http.put(f"/api/admin/v1/rewards/{reward}", json=reward_body, headers=auth).is_success
    campaign_body = {"name": "Spring"}
    assert http.put(
        f"/api/admin/v1/campaigns/{campaign}", json=campaign_body, headers=auth
    ).is_success

    def status_of(event_id: str, status: str) -> dict[str, Any] | None:
        data: dict[str, Any] = http.get(f"{BASE}/behavior/events/{event_id}", headers=auth).json()[
            "data"
        ]
        return data if data["status"] == status else None

    item = {"reward_id": reward, "campaign_id": campaign, "amount": 300}
    created = http.post(
        f"{BASE}/behavior/events",
        json={"customer_id": str(uuid.uuid4()), "accumulate": [item]},
        headers=auth,
    )
    assert created.status_code == 202, created.text
    event_id = created.json()["data"]["id"]
    wait_until(lambda: status_of(event_id, "RESOLVED"), 30, "RESOLVED")

    before = {"api": scrape(f"{urls['api']}/metrics"), "worker": scrape(urls["worker_metrics"])}
    accepted = http.post(
        f"{BASE}/behavior/events/{event_id}/reverse", json={"reason": "refund"}, headers=auth
    )
    assert accepted.status_code == 202, accepted.text
    message_id = accepted.json()["data"]["queue_message_id"]
    wait_until(lambda: status_of(event_id, "REVERSED"), 30, "REVERSED")

    def worker_counted() -> Samples | None:
        samples = scrape(urls["worker_metrics"])
        done = value(samples, "reversals_worker_reversals_total", outcome="REVERSED")
        return (
            samples
            if done
            > value(before["worker"], "reversals_worker_reversals_total", outcome="REVERSED")
            else None
        )

    after_worker = wait_until(worker_counted, 10, "the worker to count the reversal")
    after = {"api": scrape(f"{urls['api']}/metrics"), "worker": after_worker}
    http.close()

    # A message naming no event: a permanent error, so a dead letter.
    poison = str(uuid.uuid4())
    celery_app.send_task(REVERSE_TASK, args=[str(uuid.uuid4()), poison], task_id=poison)

    def dead_lettered() -> Samples | None:
        samples = scrape(urls["worker_metrics"])
        moved = value(samples, "reversals_worker_dead_letters_total") > value(
            after_worker, "reversals_worker_dead_letters_total"
        )
        return samples if moved else None

    after["dead_letter"] = wait_until(dead_lettered, 20, "the worker to count the dead letter")
    return {
        "before": before,
        "after": after,
        "event_id": event_id,
        "brand_id": brand_id,
        "message_id": message_id,
        "secrets": {"api key": api_key, "token": token, "JWT_SECRET": os.environ["JWT_SECRET"]},
    }


def test_api_metrics_moved_by_the_reversal(reversal: dict[str, Any]) -> None:
    before, after = reversal["before"]["api"], reversal["after"]["api"]

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    post = {"method": "POST", "route": REVERSE_ROUTE}
    assert moved("reversals_http_requests_total", status="202", **post) == 1
    assert moved("reversals_http_request_duration_seconds_count", **post) == 1
    assert moved("reversals_accepted_total") == 1
    # The status polls went to the GET route, labelled by its template.
    assert moved("reversals_http_requests_total", method="GET", route=READ_ROUTE, status="200") >= 1
    routes = {
        dict(labels).get("route") for name, labels in after if name.startswith("reversals_http")
    }
    assert "/api/storefront/v1/auth/authorize" in routes
    assert not any(route and re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", route) for route in routes)


def test_worker_metrics_moved_by_the_reversal(reversal: dict[str, Any]) -> None:
    before, after = reversal["before"]["worker"], reversal["after"]["worker"]

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("reversals_worker_reversals_total", outcome="REVERSED") == 1
    assert (
        moved("reversals_worker_task_duration_seconds_count", task="reversals.reverse_event") == 1
    )
    assert moved("reversals_worker_task_duration_seconds_sum", task="reversals.reverse_event") > 0
    # Read from PostgreSQL at scrape time: one more REVERSED event, one fewer RESOLVED.
    assert moved("reversals_events", status="REVERSED") == 1
    assert moved("reversals_events", status="RESOLVED") == -1
    assert moved("reversals_reversals", status="REVERSED") == 1
    assert value(after, "reversals_worker_source_up", source="postgres") == 1
    assert value(after, "reversals_worker_source_up", source="redis") == 1
    assert ("reversals_oldest_pending_seconds", frozenset()) in after
    assert any(name == "reversals_queue_depth" for name, _ in after)
    # Counted in the pool's processes, served by the main one: the events counted too.
    assert value(after, "reversals_worker_events_processed_total", outcome="RESOLVED") >= 1


def test_worker_metrics_count_a_dead_letter(reversal: dict[str, Any]) -> None:
    before, after = reversal["after"]["worker"], reversal["after"]["dead_letter"]

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("reversals_worker_dead_letters_total") == 1
    assert moved("reversals_dead_letters", state="unreplayed") == 1
    assert moved("reversals_worker_reversals_total", outcome="FAILED") == 1
    assert moved("reversals_worker_reversals_total", outcome="REVERSED") == 0


def _served_names(samples: Samples) -> set[str]:
    names = set()
    for name, _ in samples:
        names.add(name)
        names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return names


def test_every_metric_ops_refers_to_is_served(reversal: dict[str, Any]) -> None:
    served = _served_names(reversal["after"]["api"]) | _served_names(reversal["after"]["worker"])
    rules = yaml.safe_load((ROOT / "ops" / "alerts.yml").read_text())
    expressions = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert all(r.get("annotations", {}).get("summary") for g in rules["groups"] for r in g["rules"])
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    named = {m for expr in expressions for m in re.findall(r"\breversals_[a-z_]+", expr)}
    assert len(named) >= 10
    assert named - served == set()


def _lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.strip():
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                pytest.fail(f"{path.name}:{number} is not JSON: {raw[:200]!r}")
            assert isinstance(parsed, dict), raw
            lines.append(parsed)
    return lines


def test_logs_are_json_lines_with_the_context_and_no_secret(
    stack: dict[str, Any], reversal: dict[str, Any]
) -> None:
    for proc in stack["processes"]:
        stop_group(proc)  # the whole output, shutdown lines included
    logs: Path = stack["logs"]
    text = (logs / "api.log").read_text() + (logs / "worker.log").read_text()
    for what, secret in reversal["secrets"].items():
        assert secret not in text, f"the {what} is in the logs"

    event_id, brand_id = reversal["event_id"], reversal["brand_id"]
    api = _lines(logs / "api.log")
    requests = [line for line in api if line.get("event") == "request"]
    assert requests and all(line.get("request_id") and line.get("route") for line in requests)
    about_the_event = [line for line in requests if line.get("event_id") == event_id]
    assert {line["route"] for line in about_the_event} >= {READ_ROUTE, REVERSE_ROUTE}
    assert all(line.get("brand_id") == brand_id for line in about_the_event)
    refused = [line for line in requests if line["status"] == 401 and line["route"] == READ_ROUTE]
    assert refused and all("brand_id" not in line for line in refused)

    worker = _lines(logs / "worker.log")
    assert any(line.get("event") == "worker_starting" for line in worker)
    task = [line for line in worker if line.get("queue_message_id") == reversal["message_id"]]
    loggers = {line.get("logger") for line in task}
    # Ours and Celery's: received (main process), the outcome, Celery's "succeeded".
    assert {"celery.worker.strategy", "worker.processing", "celery.app.trace"} <= loggers
    for line in task:
        assert line["event_id"] == event_id, line
        if line["logger"] != "celery.worker.strategy":  # logged before the task runs
            assert line["brand_id"] == brand_id and line["attempt"] == 1, line
    done = [line for line in task if line.get("event") == "event_done"]
    assert done and done[0]["outcome"] == "REVERSED"
