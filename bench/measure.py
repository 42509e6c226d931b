"""The measures of issue 5: drain, bulk drain, intake, end to end, growth, memory.

Completion times come from PostgreSQL (`events.reversed_at`, `events.updated_at`),
written by the worker in the transaction that reverses the event, so no polling
interval enters a figure; polling only decides when a phase is over.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, text

from bench.dataset import Factory, World
from bench.env import Bench

if TYPE_CHECKING:
    import aiohttp

REASON = "bench: order refunded"
TERMINAL = ("REVERSED", "FAILED", "CANCELLED")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def chunks(items: Sequence[uuid.UUID], size: int) -> Iterator[Sequence[uuid.UUID]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# the worker process, seen from outside


def _process(pid: int) -> Any:
    import psutil  # type: ignore[import-untyped]  # psutil ships no type information

    return psutil.Process(pid)


def worker_rss_mb(pid: int) -> dict[str, Any]:
    """Resident memory of the worker's main process and of each pool process."""
    main = _process(pid)
    children = {child.pid: child.memory_info().rss / 2**20 for child in main.children()}
    return {"main_mb": main.memory_info().rss / 2**20, "children_mb": children}


def worker_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the worker and its pool processes so far."""
    main = _process(pid)
    total = 0.0
    for proc in [main, *main.children()]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def machine_busy_s() -> float:
    """CPU seconds spent by everything on the machine so far (all cores)."""
    import psutil

    times = psutil.cpu_times()
    return float(
        times.user
        + times.system
        + getattr(times, "nice", 0.0)
        + getattr(times, "irq", 0.0)
        + getattr(times, "softirq", 0.0)
    )


@dataclass
class Sample:
    at: float
    done: int
    worker_cpu: float
    machine_cpu: float


@dataclass
class Watch:
    """Samples of progress and CPU while a worker drains, for a CPU split per item."""

    worker_pid: int | None
    samples: list[Sample] = field(default_factory=list)

    def sample(self, done: int) -> None:
        cpu = worker_cpu_s(self.worker_pid) if self.worker_pid else 0.0
        self.samples.append(Sample(time.time(), done, cpu, machine_busy_s()))

    def cpu_per_item_ms(self) -> dict[str, float] | None:
        """Worker and other CPU per completed item, between the first and last progress."""
        moving = [s for s in self.samples if s.done > 0]
        if len(moving) < 2 or moving[-1].done == moving[0].done:
            return None
        first, last = moving[0], moving[-1]
        items = last.done - first.done
        worker = (last.worker_cpu - first.worker_cpu) / items * 1000
        machine = (last.machine_cpu - first.machine_cpu) / items * 1000
        wall = (last.at - first.at) / items * 1000
        return {
            "worker_cpu_ms": round(worker, 3),
            "rest_of_machine_cpu_ms": round(machine - worker, 3),
            "wall_ms": round(wall, 3),
            "machine_cpu_capacity_ms": round(wall * (os.cpu_count() or 1), 3),
        }


def wait_for(
    done: Callable[[], int], total: int, timeout: float, watch: Watch | None, what: str
) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = done()
        if watch is not None:
            watch.sample(count)
        if count >= total:
            return count
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {count} of {total} done after {timeout:.0f} s")
        time.sleep(0.2)


# events in PostgreSQL


def terminal_count(conn: Connection, ids: Sequence[uuid.UUID]) -> int:
    return int(
        conn.execute(
            text("SELECT count(*) FROM events WHERE id = ANY(:ids) AND status = ANY(:t)"),
            {"ids": list(ids), "t": list(TERMINAL)},
        ).scalar_one()
    )


def in_flight_count(conn: Connection) -> int:
    """Events PENDING or PROCESSING (the service's partial index ix_events_in_flight
    holds only those)."""
    from worker.models import IN_FLIGHT_SQL

    query = f"SELECT count(*) FROM events WHERE {IN_FLIGHT_SQL}"  # noqa: S608 - the models' constant
    return int(conn.execute(text(query)).scalar_one())


def done_count(
    connect: Callable[[], AbstractContextManager[Connection]], ids: Sequence[uuid.UUID]
) -> Callable[[], int]:
    """How many of `ids` are done, as wait_for polls it while a worker drains them.

    While events are in flight, the count is `ids` less those in flight: the phases
    run one at a time and every one of `ids` was accepted, so nothing else is in
    flight. Once nothing is, `ids` are counted one by one, which is exact. Counting
    5,000 ids at every poll cost about 60 ms of CPU (the bench's and PostgreSQL's),
    a tenth of the machine while the worker drained, which the anchors' own wait (a
    count of a small table) does not cost them; the in-flight count costs a few ms.
    """
    total = len(ids)

    def count() -> int:
        with connect() as conn:
            flying = in_flight_count(conn)
            return max(0, total - flying) if flying else terminal_count(conn, ids)

    return count


def outcomes(engine: Engine, ids: Sequence[uuid.UUID]) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, count(*) FROM events WHERE id = ANY(:ids) GROUP BY status"),
            {"ids": list(ids)},
        ).all()
    return {status: int(count) for status, count in rows}


def completion_times(
    engine: Engine, ids: Sequence[uuid.UUID], column: str = "reversed_at"
) -> dict[uuid.UUID, float]:
    """Epoch seconds at which each REVERSED event was stamped by the worker."""
    assert column in ("reversed_at", "updated_at")
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT id, extract(epoch FROM {column}) FROM events "  # noqa: S608 - column is one of two names
                "WHERE id = ANY(:ids) AND status = 'REVERSED'"
            ),
            {"ids": list(ids)},
        ).all()
    return {row[0]: float(row[1]) for row in rows}


def rate_first_to_last(times: Sequence[float]) -> float | None:
    if len(times) < 2:
        return None
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else None


# 1. drain


def request_reversals(world: World, ids: Sequence[uuid.UUID], batch: int = 100) -> float:
    """Accept reversals as the api does (request_reversal, commit, publish); returns per s."""
    from worker.db import unit_of_work
    from worker.intake import request_reversal

    started = time.perf_counter()
    for group in chunks(ids, batch):
        with unit_of_work(world.factory) as session:
            for event_id in group:
                answer = request_reversal(session, world.brand_id, event_id, REASON)
                if answer.status_code != 202:
                    raise RuntimeError(f"reversal of {event_id} answered {answer.status_code}")
    return len(ids) / (time.perf_counter() - started)


def drain(
    bench: Bench,
    *,
    world: World,
    engine: Engine,
    ids: Sequence[uuid.UUID],
    cores: int,
    on_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """N reversals queued first, then `reversals worker` started: first to last completion."""
    accepted_per_s = request_reversals(world, ids)
    queued = bench.queue_length()
    worker = bench.start_worker(cores)
    if on_start is not None:
        on_start(worker.pid)
    watch = Watch(worker.pid)
    wait_for(done_count(engine.connect, ids), len(ids), 300 + len(ids), watch, "drain")
    # A delivery takes other waiting reversals along (TAKE_WAITING): every event can
    # be done while their messages, each now a cheap IGNORED, are still queued. The
    # drain ends when the last message is taken, not at the last completion.
    emptied = wait_until_empty(bench, 300 + len(ids), watch, len(ids))
    times = list(completion_times(engine, ids).values())
    first, last = min(times), max(*times, emptied)
    return {
        "worker": worker,
        "n": len(ids),
        "queued_before_start": queued,
        "outcomes": outcomes(engine, ids),
        "per_s": (len(times) - 1) / (last - first) if last > first else None,
        "span_s": last - first,
        "completion_first_to_last_per_s": rate_first_to_last(times),
        "queue_emptied_after_last_completion_s": round(emptied - max(times), 3),
        "in_process_accept_per_s": accepted_per_s,
        "cpu_per_reversal": watch.cpu_per_item_ms(),
    }


def wait_until_empty(bench: Bench, timeout: float, watch: Watch, done: int) -> float:
    """Epoch seconds at which the queue was first seen empty (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while bench.queue_length() > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"queue not empty after {timeout:.0f} s")
        time.sleep(0.02)
    emptied = time.time()
    watch.sample(done)
    return emptied


# 2. bulk drain


def bulk_drain(
    base: str,
    token: str,
    *,
    engine: Engine,
    ids: Sequence[uuid.UUID],
    chunk: int,
    worker_pid: int,
) -> dict[str, Any]:
    """The same through POST /behavior/events/reverse, with the worker running: from the
    first request sent to the last reversal done (what a client with a refund batch sees)."""
    import httpx

    watch = Watch(worker_pid)
    calls: list[float] = []
    started = time.time()
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=300
    ) as http:
        for group in chunks(ids, chunk):
            body = {"events": [{"id": str(i), "reason": REASON} for i in group]}
            t = time.perf_counter()
            answer = http.post("/api/storefront/v1/behavior/events/reverse", json=body)
            calls.append(time.perf_counter() - t)
            if answer.status_code != 202:
                raise RuntimeError(f"bulk answered {answer.status_code}: {answer.text[:300]}")
            refused = [r for r in answer.json()["data"] if r["status"] != "ACCEPTED"]
            if refused:
                raise RuntimeError(f"bulk refused {len(refused)} item(s): {refused[:3]}")
    submitted = time.time()
    wait_for(done_count(engine.connect, ids), len(ids), 300 + len(ids), watch, "bulk")
    times = list(completion_times(engine, ids).values())
    last = max(times)
    return {
        "n": len(ids),
        "outcomes": outcomes(engine, ids),
        "per_s": len(times) / (last - started),
        "submit_per_s": len(ids) / (submitted - started),
        "call_s_median": statistics.median(calls),
        "completion_first_to_last_per_s": rate_first_to_last(times),
        "cpu_per_reversal": watch.cpu_per_item_ms(),
    }


# 3. intake

# The end to end's client: aiohttp, which costs a fraction of httpx's CPU per request
# (httpx's pool scans every connection on each request); the bulk drain's five calls
# go through httpx. The intake's load, which the api answers as fast as it can, has
# its own leaner client (bench.load). One body for all.
REVERSE_BODY = json.dumps({"reason": REASON}).encode()


def _reverse_path(event_id: uuid.UUID) -> str:
    return f"/api/storefront/v1/behavior/events/{event_id}/reverse"


def _client(base: str, token: str, *, limit: int, timeout: float) -> aiohttp.ClientSession:
    """An aiohttp session on `base` with keep-alive connections (`limit` 0: no cap)."""
    import aiohttp

    return aiohttp.ClientSession(
        base_url=base,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def _intake(
    base: str,
    token: str,
    ids: Sequence[uuid.UUID],
    concurrency: int,
    seconds: float,
    *,
    path: Callable[[uuid.UUID], str],
) -> dict[str, Any]:
    from urllib.parse import urlsplit

    from bench.load import BadAnswer, Connection, post

    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    pool = iter(ids)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    deadline = started + seconds
    ran_out = False

    async def user() -> None:
        nonlocal ran_out
        connection: Connection | None = None
        try:
            while time.perf_counter() < deadline:
                event_id = next(pool, None)
                if event_id is None:
                    ran_out = True
                    return
                request = post(host, port, path(event_id), token, REVERSE_BODY)
                # From before the connection is opened, if it must be: as a client's
                # first request on a new connection would be.
                t = time.perf_counter()
                try:
                    if connection is None:
                        connection = await Connection.open(host, port)
                    status = str(await connection.send(request))
                except (OSError, BadAnswer, TimeoutError) as exc:
                    status = type(exc).__name__
                    if connection is not None:
                        connection.close()
                    connection = None
                latencies.append(time.perf_counter() - t)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            if connection is not None:
                connection.close()

    await asyncio.gather(*(user() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    accepted = statuses.get("202", 0)
    return {
        "seconds": elapsed,
        "concurrency": concurrency,
        "requests": len(latencies),
        "statuses": dict(sorted(statuses.items())),
        "per_s": accepted / elapsed,
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "ran_out_of_events": ran_out,
    }


def intake(
    base: str,
    token: str,
    ids: Sequence[uuid.UUID],
    concurrency: int,
    seconds: float,
    *,
    path: Callable[[uuid.UUID], str] = _reverse_path,
) -> dict[str, Any]:
    """Single reversal requests over HTTP at a fixed concurrency, for a fixed time.

    `path` is the reversal's own by default; the intake floor (bench.floor) has its own.
    """
    return asyncio.run(_intake(base, token, ids, concurrency, seconds, path=path))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# 4. end to end


async def _steady(
    base: str, token: str, ids: Sequence[uuid.UUID], rate: float
) -> tuple[dict[uuid.UUID, float], list[float], list[float], dict[str, int]]:
    import aiohttp

    sent: dict[uuid.UUID, float] = {}
    left: list[float] = []  # when each request actually left
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    # No cap on connections: an open loop must not wait for the client's own pool when
    # the api falls behind; a request that still fails is counted, not retried.
    async with _client(base, token, limit=0, timeout=120) as http:

        async def one(event_id: uuid.UUID) -> None:
            at = time.time()
            left.append(at)
            t = time.perf_counter()
            try:
                async with http.post(_reverse_path(event_id), data=REVERSE_BODY) as answer:
                    await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - t)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 202:
                sent[event_id] = at

        started = time.perf_counter()
        tasks = []
        for i, event_id in enumerate(ids):
            # Open loop: each request leaves at its own time, whatever the earlier ones do.
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(event_id)))
        await asyncio.gather(*tasks)
    return sent, left, latencies, statuses


def end_to_end(
    base: str, token: str, engine: Engine, ids: Sequence[uuid.UUID], rate: float
) -> dict[str, Any]:
    """Requests at a steady rate; latency from the request leaving to the event REVERSED."""
    sent, left, http_latencies, statuses = asyncio.run(_steady(base, token, ids, rate))
    accepted = list(sent)
    # Bounded, but at least a second per request: a worker slower than the rate
    # leaves a backlog, and its latency is exactly what this measures.
    wait_for(done_count(engine.connect, accepted), len(accepted), 300 + len(accepted), None, "e2e")
    # updated_at is stamped after the ledger work, just before the commit.
    done = completion_times(engine, accepted, "updated_at")
    latencies = [done[i] - sent[i] for i in accepted if i in done]
    return {
        "rate": rate,
        "requests": len(ids),
        "sent_rate": rate_first_to_last(left),
        "statuses": dict(sorted(statuses.items())),
        "reversed": len(done),
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "http_p99_ms": _ms(percentile(http_latencies, 99)),
    }


# 5. growth (in this process: the worker's own function, timed alone)


def reverse_now(world: World, event_id: uuid.UUID, factory: Factory | None = None) -> float:
    """Accept a reversal, then deliver it as the worker does; returns the delivery's seconds."""
    from worker.db import unit_of_work
    from worker.intake import request_reversal
    from worker.processing import handle_message

    factory = factory or world.factory
    with unit_of_work(factory) as session:
        message_id = request_reversal(
            session, world.brand_id, event_id, REASON
        ).event.queue_message_id
    started = time.perf_counter()
    # Alone (take=0): the intake phase leaves its thousands of requests waiting, and a
    # delivery would take 49 of them along (TAKE_WAITING), which is not this measure.
    outcome = handle_message(event_id, message_id, factory, take=0)
    elapsed = time.perf_counter() - started
    if outcome != "REVERSED":
        raise RuntimeError(f"growth reversal of {event_id} ended {outcome}")
    return elapsed


def line_growth(world: World, sizes: Sequence[int], repeats: int) -> dict[str, Any]:
    """Time per line of one reversal, for events of each size (median of `repeats`).

    The sizes take turns, round after round, so that a change in the machine's load
    during the phase falls on every size alike.
    """
    reverse_now(world, world.many_lines(1))  # warm-up: first use of every statement
    runs: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(repeats):
        for size in sizes:
            runs[size].append(reverse_now(world, world.many_lines(size)))
    per_line: dict[str, float] = {}
    latency: dict[str, float] = {}
    for size in sizes:
        median = statistics.median(runs[size])
        latency[str(size)] = round(median * 1000, 3)
        per_line[str(size)] = round(median * 1000 / size, 4)
    return {"reversal_ms": latency, "per_line_ms": per_line, "repeats": repeats}


def ledger_probe(
    worlds: Sequence[World], ids: Sequence[Sequence[uuid.UUID]]
) -> list[dict[str, Any]]:
    """One reversal in each ledger in turn (A, B, A, B, ...): latency per ledger."""
    runs: list[list[float]] = [[] for _ in worlds]
    for round_ids in zip(*ids, strict=True):
        for i, (world, event_id) in enumerate(zip(worlds, round_ids, strict=True)):
            runs[i].append(reverse_now(world, event_id))
    return [
        {"median_ms": _ms(statistics.median(r)), "p90_ms": _ms(percentile(r, 90)), "n": len(r)}
        for r in runs
    ]
