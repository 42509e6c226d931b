"""The bench's own world: its databases, its queue, and the processes it starts.

Everything the bench creates is named after its pid (`<db>_bench_<pid>`, queue
`reversals_bench_<pid>`), so a bench never meets the tests, another bench, or a
developer's `reversals up` on the same servers; and everything it creates is
removed when it ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

from worker.procs import alive, free_port, stop_group, wait_until

BIN = Path(sys.executable).parent
API_STARTED = b"Application startup complete"  # uvicorn's line, once per worker process


@dataclass(frozen=True)
class Scale:
    """How much of everything one run does: the issue's sizes, or `--quick`."""

    name: str
    drain: int
    bulk: int
    intake_seconds: float
    # Distinct events ready for intake, for 2,000/s or more over the phase's time: it
    # stops early if it runs out, and the run is then incomplete (bench.report.problems).
    intake_pool: int
    e2e_rate: float
    e2e_seconds: float
    line_sizes: tuple[int, ...]
    line_repeats: int
    ledger_sizes: tuple[int, int]
    ledger_probes: int
    noop: int
    tx: int
    pgbench_seconds: int
    intake_concurrency: int = 32
    bulk_chunk: int = 1000


FULL = Scale(
    name="full",
    drain=5000,
    bulk=5000,
    intake_seconds=20,
    intake_pool=40_000,
    e2e_rate=100,
    e2e_seconds=20,
    line_sizes=(1, 10, 100, 1000),
    line_repeats=5,
    ledger_sizes=(10_000, 1_000_000),
    ledger_probes=30,
    noop=10_000,
    tx=5000,
    pgbench_seconds=10,
)

QUICK = Scale(
    name="quick",
    drain=500,
    bulk=500,
    intake_seconds=5,
    intake_pool=12_000,
    e2e_rate=30,
    e2e_seconds=5,
    line_sizes=(1, 10, 100),
    line_repeats=3,
    ledger_sizes=(10_000, 100_000),
    ledger_probes=10,
    noop=1000,
    tx=500,
    pgbench_seconds=5,
)


def with_db(url: str, name: str) -> str:
    """The same server URL with another database name (query string kept)."""
    base, _, query = url.partition("?")
    base = re.sub(r"/[^/]*$", f"/{name}", base)
    return f"{base}?{query}" if query else base


def db_name(url: str) -> str:
    return url.partition("?")[0].rsplit("/", 1)[1] or "postgres"


def libpq(url: str) -> str:
    """A URL psycopg and libpq accept (no SQLAlchemy driver suffix)."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


@dataclass
class Bench:
    """Databases, queue and child processes of one bench run."""

    scale: Scale
    server_url: str = ""  # DATABASE_URL as given (or the embedded server's)
    broker_url: str = ""
    url: str = ""  # the bench database
    # The ledger-growth databases: a small ledger and a large one, probed in turn.
    ledger_urls: tuple[str, str] = ("", "")
    queue: str = ""
    embedded: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="reversals-bench-")))
    _handle: Any = None
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _dbs: list[str] = field(default_factory=list)

    # set-up and tear-down

    def open(self) -> None:
        from worker import embedded
        from worker.settings import get_settings

        settings = get_settings()
        self.embedded = not settings.database_url
        self._handle = embedded.ensure(
            settings.state_dir, settings.database_url, settings.broker_url
        )
        self.server_url = libpq(os.environ["DATABASE_URL"])
        self.broker_url = os.environ["BROKER_URL"]
        pid = os.getpid()
        prefix = f"{db_name(self.server_url)}_bench_"
        self.url = with_db(self.server_url, f"{prefix}{pid}")
        self.ledger_urls = (
            with_db(self.server_url, f"{prefix}{pid}_small"),
            with_db(self.server_url, f"{prefix}{pid}_large"),
        )
        self.queue = f"reversals_bench_{pid}"
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            stale = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
            ).fetchall()
            for (name,) in stale:
                owner = name[len(prefix) :].split("_", 1)[0]
                # A run's databases carry its pid: drop only those whose run is gone.
                if owner.isdigit() and not alive(int(owner)):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for url in (self.url, *self.ledger_urls):
                conn.execute(f'CREATE DATABASE "{db_name(url)}"')
                self._dbs.append(db_name(url))
        os.environ.update(self.child_env())
        get_settings.cache_clear()
        self._drop_broker_keys(lambda pid: not alive(pid))
        from worker.migrate import upgrade

        for url in (self.url, *self.ledger_urls):
            upgrade(url)

    def child_env(self) -> dict[str, str]:
        """What every process of the bench runs with, on top of the caller's environment."""
        return {
            "DATABASE_URL": self.url,
            "BROKER_URL": self.broker_url,
            "QUEUE": self.queue,
            # The limiter stays on the request path (its cost is measured) but must not
            # refuse the load generator, which is one brand far above production rates.
            "RATE_LIMIT_PER_SECOND": "1000000",
            "RATE_LIMIT_BURST": "1000000",
            # Production's level, whatever the caller's; start_api also reads the api's
            # INFO lines to know that every worker is up.
            "LOG_LEVEL": "INFO",
        }

    def close(self) -> None:
        for proc in list(self._procs):
            self.stop(proc)
        for log in self._logs:
            log.close()
        with contextlib.suppress(Exception):
            self.purge_queue(delete=True)
        with contextlib.suppress(Exception):
            self._drop_broker_keys(lambda pid: pid == os.getpid())
        with contextlib.suppress(Exception):
            from worker.db import get_engine

            get_engine().dispose()
        if self.server_url and self._dbs:
            with psycopg.connect(self.server_url, autocommit=True) as conn:
                for name in self._dbs:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self._handle is not None:
            self._handle.stop()

    def cleanup_logs(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    # the broker

    def purge_queue(self, delete: bool = False) -> int:
        from worker.celery_app import app

        with app.connection_for_write() as conn:
            channel = conn.default_channel
            if delete:
                channel.queue_delete(self.queue)
                return 0
            purged: int = channel.queue_purge(self.queue) or 0
            return purged

    def _drop_broker_keys(self, whose: Callable[[int], bool]) -> None:
        """Delete the queue, priority lists and bindings of bench runs `whose(pid)` picks.

        Only keys named after a bench queue are touched; late redeliveries of a run's
        messages (kombu restores unacked ones) can recreate its queue after it ended.
        """
        import redis

        client = redis.Redis.from_url(self.broker_url)
        try:
            for key in client.scan_iter(match="*reversals_bench_*", count=1000):
                name = key.decode(errors="replace")
                found = re.search(r"reversals_bench_(\d+)", name)
                if found and whose(int(found.group(1))):
                    client.delete(key)
        finally:
            client.close()

    def queue_length(self) -> int:
        from amqp.exceptions import ChannelError  # type: ignore[import-untyped]  # amqp ships no types

        from worker.celery_app import app

        with app.connection_for_write() as conn:
            try:
                _, count, _ = conn.default_channel.queue_declare(self.queue, passive=True)
            except ChannelError as exc:
                if str(exc.reply_code) != "404":  # kombu gives the code as text
                    raise
                return 0  # Redis keeps no empty list: an emptied queue is gone
            return int(count)

    # child processes

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        self._logs.append(log)
        env = {**os.environ, **self.child_env()}
        # Own process group: stopping it stops the prefork children as well.
        proc = subprocess.Popen(  # noqa: S603 - our own entry points, no shell
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._procs.append(proc)
        return proc

    def reversals(self, *args: str) -> list[str]:
        exe = BIN / "reversals"
        if exe.exists():
            return [str(exe), *args]
        return [sys.executable, "-m", "worker.cli", *args]

    def start_worker(self, concurrency: int, include: str | None = None) -> subprocess.Popen[bytes]:
        """`reversals worker` as production runs it; `include` adds modules of tasks."""
        if include is None:
            cmd = self.reversals("worker", "--concurrency", str(concurrency), "--loglevel", "info")
            return self._spawn("worker", cmd)
        from worker.cli import _worker_cmd

        # Exactly the command `reversals worker` execs, plus the anchors' module.
        cmd = [*_worker_cmd(concurrency, self.queue, "prefork", "info"), "-I", include]
        return self._spawn("anchor-worker", cmd)

    def start_api(self, factory: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
        """`reversals api`; with `factory`, the same command serving another app (bench.floor)."""
        import httpx

        port = free_port()
        # `reversals api`'s default: one worker process per core (worker.cli).
        workers = os.cpu_count() or 1
        if factory is None:
            cmd = self.reversals("api", "--host", "127.0.0.1", "--port", str(port))
        else:
            from worker.cli import _api_cmd

            cmd = _api_cmd("127.0.0.1", port, workers, factory)
        log = self.workdir / "api.log"
        before = log.stat().st_size if log.exists() else 0
        proc = self._spawn("api", cmd)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the api exited; see {log}")
            # Every worker, not the first to answer: the load's connections stay with
            # the workers that accepted them, and a worker still starting gets none.
            started = log.read_bytes()[before:].count(API_STARTED)
            try:
                answered = httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
            return answered and started >= workers

        wait_until(ready, 60, f"the api's {workers} workers to answer")
        return proc, base

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 30) -> None:
        stop_group(proc, grace=grace)
        if proc in self._procs:
            self._procs.remove(proc)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
