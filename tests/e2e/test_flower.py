"""Flower as an operator uses it: `reversals flower` behind basic auth, watching a real
`reversals worker`, and a finished reversal read back through Flower's own HTTP API,
its task id the event's queue_message_id."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import World
from worker.db import get_sessionmaker, unit_of_work
from worker.models import Event
from worker.procs import free_port, stop_group, wait_until

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "reversals"), *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        # Its own process group: teardown stops it and every child it forked.
        start_new_session=True,
    )


def wait_status(event_id: uuid.UUID, status: str, timeout: float = 30) -> Event:
    def reached() -> Event | None:
        with unit_of_work() as session:
            event = session.get_one(Event, event_id)
            return event if event.status == status else None

    found: Event = wait_until(reached, timeout, f"event {event_id} to become {status}")
    return found


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("flower-logs")
    auth = ("operator", secrets.token_urlsafe(12))
    env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": f"{auth[0]}:{auth[1]}",
        "WORKER_METRICS_PORT": "0",  # not what this test is about; no port to share
    }
    port = free_port()
    processes = [
        start(["flower", "--port", str(port)], logs / "flower.log", env),
        start(["worker", "--concurrency", "1", "--loglevel", "warning"], logs / "worker.log", env),
    ]
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthcheck", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, "Flower to answer")

        def sees_a_worker() -> bool:
            # Flower knows a worker only from its events: its event receiver is live.
            answer = httpx.get(f"{base}/workers", params={"json": 1}, auth=auth, timeout=5)
            return answer.status_code == 200 and any(w["status"] for w in answer.json()["data"])

        wait_until(sees_a_worker, 40, "Flower to receive the worker's events")
        yield {"base": base, "auth": auth, "logs": logs}
    finally:
        for proc in processes:
            stop_group(proc)


def test_flower_shows_a_finished_reversal_by_its_queue_message_id(flower: dict[str, Any]) -> None:
    base, auth = flower["base"], flower["auth"]
    world = World.create(get_sessionmaker())
    event_id = world.submit(uuid.uuid4(), accumulate=[120, 30])
    first_message = world.message_id(event_id)
    wait_status(event_id, "RESOLVED")
    assert world.request_reversal(event_id) == 202
    message_id = world.message_id(event_id)
    assert message_id != first_message
    reversed_ = wait_status(event_id, "REVERSED")
    assert reversed_.reversal_status == "REVERSED"

    def finished() -> dict[str, Any] | None:
        answer = httpx.get(f"{base}/api/task/info/{message_id}", auth=auth, timeout=5)
        if answer.status_code != 200:
            return None
        info: dict[str, Any] = answer.json()
        return info if info.get("state") == "SUCCESS" else None

    task = wait_until(finished, 20, "Flower to report the reversal task")
    assert task["uuid"] == message_id
    assert task["name"] == "reversals.reverse_event"
    assert task["state"] == "SUCCESS"
    assert "REVERSED" in str(task["result"])
    assert str(event_id) in str(task["args"])

    first = httpx.get(f"{base}/api/task/info/{first_message}", auth=auth, timeout=5).json()
    assert first["name"] == "reversals.process_event" and first["state"] == "SUCCESS"

    # Prometheus scrapes Flower's own metrics without the dashboard's credentials.
    metrics = httpx.get(f"{base}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert 'task="reversals.reverse_event"' in metrics.text
    assert "flower_events_total" in metrics.text


def test_flower_refuses_a_caller_without_the_credentials(flower: dict[str, Any]) -> None:
    base, (user, _) = flower["base"], flower["auth"]
    task = f"{base}/api/task/info/{uuid.uuid4()}"
    assert httpx.get(task, timeout=5).status_code == 401
    assert httpx.get(task, auth=(user, "wrong"), timeout=5).status_code == 401
    assert httpx.get(f"{base}/workers", timeout=5).status_code == 401
    assert httpx.get(f"{base}/api/workers", timeout=5).status_code == 401
