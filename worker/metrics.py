"""Prometheus metrics of the worker, served on WORKER_METRICS_PORT (default 9808).

Counters from Celery's signals: reversals and first processings by outcome (the
value the task returned), task latency, retries, exceptions, dead letters, what the
sweeper re-published. Gauges read from PostgreSQL and Redis when Prometheus
scrapes: queue depth, events and reversals by status, dead letters not replayed,
the age of the oldest pending request.

How the counts of the pool's processes meet: Celery's prefork pool runs tasks in
child processes, so each child counts its own. We use prometheus_client's
multiprocess mode, its documented answer for pre-forking servers: when `celery
worker` starts (`celeryd_init`, in the main process, before the pool forks and
before prometheus_client is imported), PROMETHEUS_MULTIPROC_DIR is set to a fresh
directory `<STATE_DIR>/prometheus/worker-<host>-<pid>`; every process writes its
values there (one mmap file per pid) and the main process serves them all,
summed by a MultiProcessCollector, once the worker is ready. The directory is
emptied at start, as the library requires, and removed at shutdown.

Nothing happens outside `celery worker`: the api, beat and Flower also import the
Celery app, and none of them starts this server or changes prometheus_client's mode.
With several workers on one host give each its own port; one whose port is taken
logs `worker_metrics_port_busy` and runs on without metrics. WORKER_METRICS_PORT=0
turns the endpoint off.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from celery import signals

from worker.processing import BATCH_TASK
from worker.procs import fresh_directory
from worker.settings import Settings, get_settings

log = structlog.get_logger(__name__)

REVERSE_TASK = "reversals.reverse_event"
PROCESS_TASK = "reversals.process_event"
SWEEP_TASK = "reversals.sweep"
EXPIRY_TASKS = {"reversals.expire_lines": "lines", "reversals.expire_reservations": "reservations"}
OUTCOMES = {"REVERSED", "CANCELLED", "RESOLVED", "FAILED", "IGNORED"}
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    """The counters; created once in the worker's main process, inherited by the pool."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.reversals = Counter(
            "reversals_worker_reversals_total",
            "Reversal deliveries by outcome (REVERSED, CANCELLED, FAILED, IGNORED)",
            ["outcome"],
        )
        self.processed = Counter(
            "reversals_worker_events_processed_total",
            "First-processing deliveries by outcome (RESOLVED, FAILED, IGNORED)",
            ["outcome"],
        )
        self.duration = Histogram(
            "reversals_worker_task_duration_seconds",
            "Task run time, from task_prerun to task_postrun",
            ["task"],
            buckets=TASK_BUCKETS,
        )
        self.retries = Counter(
            "reversals_worker_task_retries_total",
            "Retries scheduled after a transient error",
            ["task"],
        )
        self.failures = Counter(
            "reversals_worker_task_failures_total",
            "Tasks that raised (not the FAILED outcome a task returns); the logs say what",
            ["task"],
        )
        self.dead_letters = Counter(
            "reversals_worker_dead_letters_total", "Dead letters this worker wrote to PostgreSQL"
        )
        self.swept = Counter(
            "reversals_worker_swept_total", "Stuck requests the sweeper published again"
        )
        self.expired = Counter(
            "reversals_worker_expired_total",
            "Lines and reservations expired by the beat tasks",
            ["kind"],
        )
        # Every known series exists from the start at 0, so rate() and alerts see
        # the first increase instead of a series appearing from nowhere.
        for outcome in ("REVERSED", "CANCELLED", "FAILED", "IGNORED"):
            self.reversals.labels(outcome)
        for outcome in ("RESOLVED", "FAILED", "IGNORED"):
            self.processed.labels(outcome)
        for task in (REVERSE_TASK, PROCESS_TASK):
            self.duration.labels(task)
            self.retries.labels(task)
            self.failures.labels(task)
        for kind in EXPIRY_TASKS.values():
            self.expired.labels(kind)


class LedgerCollector:
    """Gauges computed at scrape time from PostgreSQL and Redis (see worker.status)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Any = None
        # The last full count of events by status, and when it was taken.
        self._counted: tuple[float, dict[str, int], dict[str, int]] | None = None

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: collecting queries the database

    def _session(self) -> Any:
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            # No pool: the main process forks new pool children at any time, and a
            # child must never inherit an open database connection.
            self._engine = create_engine(self.settings.sqlalchemy_url, poolclass=NullPool)
        return Session(bind=self._engine)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from worker.status import IN_FLIGHT, read_broker, read_ledger

        up = GaugeMetricFamily(
            "reversals_worker_source_up",
            "1 when this scrape could read the source (postgres, redis)",
            labels=["source"],
        )
        broker = read_broker(self.settings.broker_url, self.settings.queue)
        up.add_metric(["redis"], 0 if broker.error else 1)
        if broker.queue_depth is not None:
            depth = GaugeMetricFamily(
                "reversals_queue_depth", "Messages waiting in the broker queue", labels=["queue"]
            )
            depth.add_metric([broker.queue], broker.queue_depth)
            yield depth
            unacked = GaugeMetricFamily(
                "reversals_broker_unacked", "Messages taken by workers and not yet acknowledged"
            )
            unacked.add_metric([], broker.unacked or 0)
            yield unacked
        now = time.monotonic()
        full = (
            self._counted is None
            or now - self._counted[0] >= self.settings.worker_metrics_count_interval
        )
        try:
            with self._session() as session, session.begin():
                ledger = read_ledger(session, full=full)
        except Exception as exc:
            log.warning("metrics_ledger_unavailable", error=f"{type(exc).__name__}: {exc}")
            up.add_metric(["postgres"], 0)
            yield up
            return
        up.add_metric(["postgres"], 1)
        yield up
        if full:
            self._counted = (now, dict(ledger.events), dict(ledger.reversals))
        elif self._counted is not None:
            # Terminal statuses from the last full count, in-flight ones exact now.
            _, counted_events, counted_reversals = self._counted
            ledger.events = {**counted_events, **{s: ledger.events[s] for s in IN_FLIGHT}}
            ledger.reversals = {
                **counted_reversals,
                **{s: ledger.reversals[s] for s in IN_FLIGHT},
            }
        events = GaugeMetricFamily("reversals_events", "Events by status", labels=["status"])
        for status, count in ledger.events.items():
            events.add_metric([status], count)
        yield events
        reversals = GaugeMetricFamily(
            "reversals_reversals", "Events by reversal status", labels=["status"]
        )
        for status, count in ledger.reversals.items():
            reversals.add_metric([status], count)
        yield reversals
        letters = GaugeMetricFamily(
            "reversals_dead_letters", "Dead letters in PostgreSQL", labels=["state"]
        )
        letters.add_metric(["unreplayed"], ledger.dead_letters_unreplayed)
        letters.add_metric(["replayed"], ledger.dead_letters - ledger.dead_letters_unreplayed)
        yield letters
        oldest = GaugeMetricFamily(
            "reversals_oldest_pending_seconds",
            "How long the oldest PENDING or PROCESSING request has waited (0: none)",
        )
        oldest.add_metric([], ledger.oldest_pending_seconds or 0.0)
        yield oldest


class _State:
    metrics: WorkerMetrics | None = None
    directory: Path | None = None
    server: Any = None
    started: dict[str, float] = {}  # noqa: RUF012 - one per process, on purpose


def prepare_directory(state_dir: Path) -> Path:
    """A fresh multiprocess directory for this worker; stale ones of dead workers go."""
    return fresh_directory(state_dir, "worker")


def _worker_starting(**_: Any) -> None:
    settings = get_settings()
    if not settings.worker_metrics_port:
        return
    _State.directory = prepare_directory(settings.state_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_State.directory)
    if "prometheus_client" in sys.modules:
        # Imported before the worker started: its value class was chosen without the
        # directory. Choose again, before any of our metrics exists.
        from prometheus_client import values

        chooser: Any = values.get_value_class  # untyped in prometheus_client
        values.ValueClass = chooser()
    _State.metrics = WorkerMetrics()
    _count_dead_letters(_State.metrics)


def _count_dead_letters(metrics: WorkerMetrics) -> None:
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from worker.db import on_commit
    from worker.models import DeadLetter

    @event.listens_for(Session, "before_flush")
    def _new_dead_letters(session: Session, *_: Any) -> None:
        count = sum(1 for obj in session.new if isinstance(obj, DeadLetter))
        if count:
            # Counted once committed: a rolled-back dead letter was never written.
            on_commit(session, lambda: metrics.dead_letters.inc(count))


def _serve(**_: Any) -> None:
    if _State.metrics is None or _State.directory is None:
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    settings = get_settings()
    registry = CollectorRegistry()
    collector: Any = MultiProcessCollector  # untyped in prometheus_client
    collector(registry, path=str(_State.directory))
    registry.register(LedgerCollector(settings))
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    try:
        _State.server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("worker_metrics_port_busy", host=host, port=port, error=str(exc))
        return
    log.info("worker_metrics_serving", url=f"http://{host}:{port}/metrics")


def _stop(**_: Any) -> None:
    if _State.server is not None:
        _State.server.shutdown()
        _State.server.server_close()
        _State.server = None
    if _State.directory is not None:
        shutil.rmtree(_State.directory, ignore_errors=True)


def _task_started(task_id: str | None = None, **_: Any) -> None:
    if _State.metrics is not None and task_id:
        _State.started[task_id] = time.perf_counter()


def _task_finished(
    task_id: str | None = None,
    task: Any = None,
    retval: Any = None,
    state: str | None = None,
    **_: Any,
) -> None:
    started = _State.started.pop(task_id or "", None)
    metrics = _State.metrics
    if metrics is None or task is None:
        return
    name = str(task.name)
    if started is not None:
        metrics.duration.labels(name).observe(time.perf_counter() - started)
    if state != "SUCCESS":
        return
    # A batch, or a single reversal that took waiting ones along: outcomes counted.
    if name in (BATCH_TASK, REVERSE_TASK) and isinstance(retval, dict):
        for outcome, count in retval.items():
            metrics.reversals.labels(outcome if outcome in OUTCOMES else "OTHER").inc(count)
    elif name in (REVERSE_TASK, PROCESS_TASK) and isinstance(retval, str):
        outcome = retval if retval in OUTCOMES else "OTHER"
        counter = metrics.reversals if name == REVERSE_TASK else metrics.processed
        counter.labels(outcome).inc()
    elif name == SWEEP_TASK and isinstance(retval, int):
        metrics.swept.inc(retval)
    elif name in EXPIRY_TASKS and isinstance(retval, int):
        metrics.expired.labels(EXPIRY_TASKS[name]).inc(retval)


def _task_retried(sender: Any = None, **_: Any) -> None:
    if _State.metrics is not None and sender is not None:
        _State.metrics.retries.labels(str(sender.name)).inc()


def _task_raised(sender: Any = None, **_: Any) -> None:
    if _State.metrics is not None and sender is not None:
        _State.metrics.failures.labels(str(sender.name)).inc()


signals.celeryd_init.connect(_worker_starting)
signals.worker_ready.connect(_serve)
signals.worker_shutdown.connect(_stop)
signals.task_prerun.connect(_task_started)
signals.task_postrun.connect(_task_finished)
signals.task_retry.connect(_task_retried)
signals.task_failure.connect(_task_raised)
