"""The anchors: the simplest things a user could run instead, measured in the same run.

(a) `bench.noop`, a Celery task that does nothing; (b) `bench.tpcb`, a Celery task
doing one TPC-B-like transaction (select for update, update, insert); both are
registered on the service's own Celery app and run by a worker started with
exactly the command `reversals worker` runs (plus `-I bench.anchors`), so the
pool, concurrency, late acks, prefetch and database engine are the same as the
reversals'. (c) is `apply_async` from one process; (d) is pgbench's built-in
TPC-B-like script.

This module is imported by the bench process and by the anchors' worker only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from worker.celery_app import app
from worker.db import get_engine

NOOP = "bench.noop"
TPCB = "bench.tpcb"
ACCOUNTS = 100_000  # pgbench's scale 1: little contention between two workers


def _noop(n: int) -> None:
    """Anchor (a): the cost of Celery itself."""


def _tpcb(aid: int, delta: int) -> None:
    """Anchor (b): one short TPC-B-like transaction through the service's own engine."""
    with get_engine().begin() as conn:
        conn.execute(
            text("SELECT abalance FROM bench_accounts WHERE aid = :aid FOR UPDATE"), {"aid": aid}
        )
        conn.execute(
            text("UPDATE bench_accounts SET abalance = abalance + :delta WHERE aid = :aid"),
            {"aid": aid, "delta": delta},
        )
        conn.execute(
            text(
                "INSERT INTO bench_history (aid, delta, mtime) "
                "VALUES (:aid, :delta, clock_timestamp())"
            ),
            {"aid": aid, "delta": delta},
        )


# The task decorator is untyped (Celery ships no types): applied as a call.
noop = app.task(name=NOOP, acks_late=True, ignore_result=True)(_noop)
tpcb = app.task(name=TPCB, acks_late=True, ignore_result=True)(_tpcb)


def create_tpcb_tables() -> None:
    """The TPC-B anchor's tables, empty: each round of the anchors starts from scratch."""
    with get_engine().begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_history, bench_accounts"))
        conn.execute(
            text("CREATE TABLE bench_accounts (aid integer PRIMARY KEY, abalance integer NOT NULL)")
        )
        conn.execute(
            text("INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, :n) AS g(g)"),
            {"n": ACCOUNTS},
        )
        conn.execute(
            text(
                "CREATE TABLE bench_history (id bigint GENERATED ALWAYS AS IDENTITY, "
                "aid integer NOT NULL, delta integer NOT NULL, mtime timestamptz NOT NULL)"
            )
        )


def tpcb_completions() -> tuple[int, float | None, float | None]:
    """Count, first and last completion (epoch seconds) of the TPC-B anchor's tasks."""
    with get_engine().connect() as conn:
        count, first, last = conn.execute(
            text(
                "SELECT count(*), extract(epoch FROM min(mtime)), extract(epoch FROM max(mtime)) "
                "FROM bench_history"
            )
        ).one()
    return int(count), (float(first) if first else None), (float(last) if last else None)


def publish(task: Any, count: int, prefix: str, args: Any) -> float:
    """Publish `count` messages from this one process; returns messages per second."""
    started = time.perf_counter()
    for i in range(count):
        task.apply_async(args=args(i), task_id=f"{prefix}-{i}")
    return count / (time.perf_counter() - started)


@dataclass
class Completions:
    """Listens to the workers' task events (the production `-E`) for task ids with a prefix.

    The no-op anchor writes nothing anywhere, so its completion times are the
    `task-succeeded` events' timestamps, taken by the worker when the task ended.
    """

    prefix: str
    times: list[float] = field(default_factory=list)
    _receiver: Any = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        def on_success(event: dict[str, Any]) -> None:
            if str(event.get("uuid", "")).startswith(self.prefix):
                self.times.append(float(event["timestamp"]))

        def listen() -> None:
            with app.connection_for_read() as conn:
                self._receiver = app.events.Receiver(conn, handlers={"task-succeeded": on_success})
                self._ready.set()
                self._receiver.capture(limit=None, timeout=None, wakeup=False)

        self._thread = threading.Thread(target=listen, name="bench-events", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        time.sleep(0.5)  # the fanout subscription is made once capture starts consuming

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(5)


def pgbench_path(embedded: bool) -> str | None:
    """pgbench on PATH; with the embedded engine, the one pgserver bundles (same version)."""
    if embedded:
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench"
        if bundled.exists():
            return str(bundled)
    return shutil.which("pgbench")


def pgbench(url: str, clients: int, seconds: int, embedded: bool) -> dict[str, Any]:
    """pgbench's TPC-B-like TPS on the bench database (scale 1, `clients` = cores)."""
    exe = pgbench_path(embedded)
    if exe is None:
        return {"tps": None, "command": None, "note": "pgbench not found"}
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(url)
    env = {**os.environ}
    for key, var in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("password", "PGPASSWORD"),
        ("dbname", "PGDATABASE"),
    ):
        if parts.get(key):
            env[var] = str(parts[key])
    init = [exe, "-i", "-s", "1", "-q"]
    run = [exe, "-n", "-c", str(clients), "-j", str(clients), "-T", str(seconds)]
    subprocess.run(init, env=env, check=True, capture_output=True, text=True)  # noqa: S603 - pgbench, no shell
    done = subprocess.run(run, env=env, check=True, capture_output=True, text=True)  # noqa: S603 - pgbench, no shell
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    if found is None:
        found = re.search(r"tps = ([0-9.]+)", done.stdout)
    asked = [exe, "--version"]
    version = subprocess.run(asked, check=False, capture_output=True, text=True)  # noqa: S603 - pgbench, no shell
    return {
        "tps": float(found.group(1)) if found else None,
        "command": " ".join(["pgbench", *run[1:]]),
        "version": version.stdout.strip(),
    }
