"""Real processes for the fault tests: workers started and killed, events driven in
the committed test database (not the rollback fixture: other processes must see them)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import func, select

from tests.support import World
from worker.db import get_sessionmaker, unit_of_work
from worker.ledger.invariants import assert_invariants
from worker.models import Event, Transaction
from worker.procs import wait_until

ROOT = Path(__file__).resolve().parents[2]


def committed_world() -> World:
    return World.create(get_sessionmaker())


def start_worker(
    logs: Path, name: str, env: dict[str, str] | None = None, concurrency: int = 1
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        os.environ["QUEUE"],
        "-c",
        str(concurrency),
        "-P",
        "prefork",
        "-l",
        "info",
        "-I",
        "tests.faults.hooks",
        "-n",
        f"{name}-{uuid.uuid4().hex[:6]}@%h",
    ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=(logs / f"{name}.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def status(event_id: uuid.UUID) -> str:
    with unit_of_work() as session:
        return session.get_one(Event, event_id).status


def wait_status(event_id: uuid.UUID, *wanted: str, timeout: float = 60) -> str:
    return str(
        wait_until(
            lambda: status(event_id) in wanted and status(event_id),
            timeout,
            f"{event_id} to become {wanted}",
        )
    )


def reversal_count(event_id: uuid.UUID) -> int:
    with unit_of_work() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Transaction)
                .where(Transaction.event_id == event_id, Transaction.type == "REVERSAL")
            )
            or 0
        )


def check_ledger(customer: uuid.UUID | None = None) -> None:
    with unit_of_work() as session:
        assert_invariants(session, customer)


def deliveries(fault_dir: Path) -> int:
    path = fault_dir / "deliveries"
    return len(path.read_text().splitlines()) if path.exists() else 0
