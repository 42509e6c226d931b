"""`reversals bench`: every measure of issue 5 and its anchors, in one run.

Order of the run (each phase alone on the machine, as far as the bench goes):
set-up (databases, data set, api) → anchors (a), (b) and (c) on one worker →
pgbench (d) → drain → bulk drain (same worker: memory after N and 2N) → end to
end (same worker) → intake (worker stopped) → intake floor (bench.floor, the same
api with a route that only publishes) → anchors (a), (b) and (c) again → growth per
line and per ledger size (the worker's own function, timed in this process) →
report. The ratios divide by each anchor's mean of its two rounds, which bracket
every measure of the service.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import random
import signal
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from bench.env import FULL, QUICK, Bench, Scale

DEFAULT_OUT = Path("bench/out/bench.json")


@click.command("bench")
@click.option("--quick", is_flag=True, help="a small run (CI: about two minutes)")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="the JSON file of every figure and ratio",
)
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="the PNG chart [default: next to --out, .png]",
)
@click.option(
    "--profile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="py-spy the worker during the drain; raw stacks to this file (slows the drain)",
)
def bench(quick: bool, out: Path, chart: Path | None, profile: Path | None) -> None:
    """Benchmark the service against its anchors, measured in the same run (SPEC §9).

    Makes its own databases (`<db>_bench_<pid>` on DATABASE_URL's server, or the
    embedded engine) and its own queue, and removes them at the end.
    """
    scale = QUICK if quick else FULL
    results = run(scale, profile)
    from bench.chart import draw
    from bench.report import print_table, problems, write_json

    write_json(results, out)
    chart = chart or out.with_suffix(".png")
    draw(results, chart)
    print_table(results)
    click.echo(f"wrote {out} and {chart} in {results['duration_s']:.0f} s")
    found = problems(results)
    if found:
        # Targets missed are results; a run that did not measure is a failure.
        raise click.ClickException("the run is incomplete: " + "; ".join(found))


class Progress:
    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.started = time.perf_counter()
        # Each phase's start and the machine's load then: the machine is shared.
        self.phases: list[dict[str, Any]] = []

    def __call__(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        if not message.startswith(" "):
            self.phases.append(
                {"phase": message, "at_s": round(elapsed, 1), "loadavg_1m": os.getloadavg()[0]}
            )
        self.console.print(f"[dim]{elapsed:6.1f} s[/] {message}")


def _quiet() -> None:
    """This process calls the worker's functions: keep their per-event log lines out."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def run(scale: Scale, profile: Path | None = None) -> dict[str, Any]:
    _quiet()
    say = Progress()
    cores = os.cpu_count() or 1
    started = datetime.now(UTC)
    load_start = [round(x, 2) for x in os.getloadavg()]
    bench = Bench(scale)
    # A run stopped by SIGTERM (a CI timeout, kill) cleans up as Ctrl-C does: its
    # worker, api and databases must not outlive it.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        say(f"set-up: databases and queue ({scale.name} run, {cores} cores)")
        bench.open()
        results = _measure(bench, scale, cores, say, profile)
    except BaseException:
        say(f"[red]failed[/]; the processes' logs are kept in {bench.workdir}")
        for name in ("worker", "anchor-worker", "api"):
            tail = bench.log_tail(name, 15)
            if tail:
                say(f"--- {name}.log (end) ---\n{tail}")
        bench.close()
        raise
    bench.close()
    bench.cleanup_logs()
    finished = datetime.now(UTC)
    results["started_at"] = started.isoformat(timespec="seconds")
    results["finished_at"] = finished.isoformat(timespec="seconds")
    results["duration_s"] = round((finished - started).total_seconds(), 1)
    results["machine"]["loadavg_start"] = load_start
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    say("done")
    results["phases"] = say.phases
    return results


def _measure(
    bench: Bench, scale: Scale, cores: int, say: Progress, profile: Path | None
) -> dict[str, Any]:

    from bench import dataset, measure
    from bench.anchors import pgbench
    from worker.db import get_engine, get_sessionmaker

    engine = get_engine()
    world = dataset.World.create(get_sessionmaker())
    machine, settings = _machine(engine, cores)
    machine["embedded_engines"] = bench.embedded
    if settings["synchronous_commit"] != "on" or settings["fsync"] != "on":
        say("[yellow]warning: synchronous_commit or fsync is off on this server[/]")
    pools, data = _data_set(bench, scale, world, engine, say)

    api, base = bench.start_api()
    token = _token(base, world.api_key)

    before = _anchors(bench, scale, cores, say, "before")
    say(f"anchor (d): pgbench, {cores} clients, {scale.pgbench_seconds} s")
    tps = pgbench(bench.url, cores, scale.pgbench_seconds, bench.embedded)
    say(f"  {tps['tps']} tps")

    phases = _worker_phases(
        bench,
        scale=scale,
        cores=cores,
        say=say,
        profile=profile,
        world=world,
        engine=engine,
        pools=pools,
        base=base,
        token=token,
    )

    say(
        f"intake: concurrency {scale.intake_concurrency} for {scale.intake_seconds:g} s "
        "(worker stopped)"
    )
    phases["intake"] = measure.intake(
        base, token, pools["intake"], scale.intake_concurrency, scale.intake_seconds
    )
    taken = phases["intake"]
    # `reversals api` as started above runs one worker process per core (worker.cli).
    taken["api_workers"] = cores
    say(f"  {taken['per_s']:,.0f}/s, p50 {taken['p50_ms']} ms, p99 {taken['p99_ms']} ms")
    bench.stop(api)
    bench.purge_queue()
    phases["intake_floor"] = _intake_floor(bench, scale, world, cores, say)
    anchors = {**_bracket(before, _anchors(bench, scale, cores, say, "after")), "pgbench": tps}

    say(f"growth: time per line for events of {', '.join(map(str, scale.line_sizes))} lines")
    phases["line_growth"] = measure.line_growth(world, scale.line_sizes, scale.line_repeats)
    bench.purge_queue()
    say(
        f"growth: one reversal with {scale.ledger_sizes[0]:,} and "
        f"{scale.ledger_sizes[1]:,} ledger lines (own database)"
    )
    phases["ledger_growth"] = _ledger_growth(bench, scale)
    bench.purge_queue()
    return _summary(
        scale,
        cores=cores,
        anchors=anchors,
        phases=phases,
        machine=machine,
        settings=settings,
        data=data,
    )


def _data_set(
    bench: Bench, scale: Scale, world: Any, engine: Any, say: Progress
) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The template customer, cloned into one pool of events per measure."""
    from bench import dataset

    say("data set: template customer by the service's code, clones in SQL")
    template = dataset.make_template(world)
    per = len(template.targets)
    e2e_n = math.ceil(scale.e2e_rate * scale.e2e_seconds)
    sizes = {"drain": scale.drain, "bulk": scale.bulk, "e2e": e2e_n, "intake": scale.intake_pool}
    pools: dict[str, list[Any]] = {}
    ranges: dict[str, range] = {}
    first = 1
    for name, n in sizes.items():
        ranges[name] = range(first, first + math.ceil(n / per))
        pools[name] = dataset.targets(template, ranges[name])[:n]
        first += len(ranges[name])
    built = time.perf_counter()
    dataset.clone(engine, template, 1, first - 1)
    clone_s = time.perf_counter() - built
    dataset.check(world.factory, [dataset.customers(template, r)[0] for r in ranges.values()])
    dataset.analyze(engine)
    bench.purge_queue()  # the template's own process_event messages, already applied
    data = {
        "customers": first,  # the clones and the template
        "events_ready": sum(len(p) for p in pools.values()),
        "ledger_lines": dataset.count_lines(engine),
        "clone_seconds": round(clone_s, 1),
    }
    say(f"  {data['events_ready']:,} events ready, {data['ledger_lines']:,} lines")
    return pools, data


def _worker_phases(
    bench: Bench,
    *,
    scale: Scale,
    cores: int,
    say: Progress,
    profile: Path | None,
    world: Any,
    engine: Any,
    pools: dict[str, list[Any]],
    base: str,
    token: str,
) -> dict[str, Any]:
    """Drain, bulk drain and end to end, on one `reversals worker` (memory after N, 2N)."""
    from bench import measure
    from bench.profile import Recorder, stop_quietly, summarize

    recorder: Recorder | None = None

    def start_profile(pid: int) -> None:
        nonlocal recorder
        if profile is not None:
            recorder = Recorder(pid, profile)

    say(f"drain: {scale.drain:,} reversals queued, then `reversals worker -c {cores}`")
    drained = measure.drain(
        bench, world=world, engine=engine, ids=pools["drain"], cores=cores, on_start=start_profile
    )
    worker = drained.pop("worker")
    phases: dict[str, Any] = {"drain": drained}
    if recorder is not None and profile is not None:
        stop_quietly(recorder)
        if profile.exists():
            phases["profile"] = summarize(profile)
    rss_n = measure.worker_rss_mb(worker.pid)
    say(f"  {drained['per_s']:,.1f}/s; worker memory {_max(rss_n):.1f} MB")

    say(f"bulk drain: {scale.bulk:,} through POST …/events/reverse, {scale.bulk_chunk:,} per call")
    phases["bulk"] = measure.bulk_drain(
        base,
        token,
        engine=engine,
        ids=pools["bulk"],
        chunk=scale.bulk_chunk,
        worker_pid=worker.pid,
    )
    rss_2n = measure.worker_rss_mb(worker.pid)
    say(f"  {phases['bulk']['per_s']:,.1f}/s; worker memory {_max(rss_2n):.1f} MB")
    phases["memory"] = _memory(rss_n, rss_2n)

    say(f"end to end: {scale.e2e_rate:g} req/s for {scale.e2e_seconds:g} s")
    e2e = measure.end_to_end(base, token, engine, pools["e2e"], scale.e2e_rate)
    phases["e2e"] = e2e
    say(f"  p50 {e2e['p50_ms']} ms, p99 {e2e['p99_ms']} ms")
    bench.stop(worker)
    return phases


def _token(base: str, api_key: str) -> str:
    """A bearer token of the data set's brand, from the api at `base`."""
    import httpx

    answer = httpx.get(f"{base}/api/storefront/v1/auth/authorize", headers={"x-api-key": api_key})
    token: str = answer.json()["data"]["access_token"]
    return token


def _intake_floor(
    bench: Bench, scale: Scale, world: Any, cores: int, say: Progress
) -> dict[str, Any]:
    """The same api, load and token on bench.floor's route: no database, one publish."""
    from bench import floor, measure

    say(f"intake floor: the same api and load, a route that only publishes ({floor.PATH})")
    api, base = bench.start_api(factory="bench.floor:app_factory")
    try:
        token = _token(base, world.api_key)
        # Any event id will do: the route reads none. More than the phase can use.
        ids = [uuid.uuid4() for _ in range(int(scale.intake_seconds * 10_000))]
        found = measure.intake(
            base, token, ids, scale.intake_concurrency, scale.intake_seconds, path=floor.path
        )
    finally:
        bench.stop(api)
        bench.purge_queue()
    found["api_workers"] = cores
    say(f"  {found['per_s']:,.0f}/s, p50 {found['p50_ms']} ms, p99 {found['p99_ms']} ms")
    return found


def _summary(
    scale: Scale,
    *,
    cores: int,
    anchors: dict[str, Any],
    phases: dict[str, Any],
    machine: dict[str, Any],
    settings: dict[str, Any],
    data: dict[str, Any],
) -> dict[str, Any]:
    """The flat figures and ratios the issue names, then every detail."""
    from bench.report import judge, ratio

    drained, bulk, taken, e2e = phases["drain"], phases["bulk"], phases["intake"], phases["e2e"]
    floor = phases["intake_floor"]
    per_line = phases["line_growth"]["per_line_ms"]
    largest = per_line[str(max(scale.line_sizes))]
    by_lines = list(phases["ledger_growth"]["by_lines"].values())
    tx, pg = anchors["tx_per_s"], anchors["pgbench"]["tps"]
    results: dict[str, Any] = {
        "scale": {**asdict(scale)},
        "worker_concurrency": cores,
        "drain_per_s": _round(drained["per_s"]),
        "bulk_drain_per_s": _round(bulk["per_s"]),
        "intake_per_s": _round(taken["per_s"]),
        "intake_p50_ms": taken["p50_ms"],
        "intake_p99_ms": taken["p99_ms"],
        "e2e_p50_ms": e2e["p50_ms"],
        "e2e_p99_ms": e2e["p99_ms"],
        "anchor_noop_per_s": _round(anchors["noop_per_s"]),
        "anchor_tx_per_s": _round(tx),
        "anchor_publish_per_s": _round(anchors["publish_per_s"]),
        "anchor_pgbench_tps": _round(pg),
        "drain_vs_anchor_tx": ratio(drained["per_s"], tx),
        "bulk_vs_anchor_tx": ratio(bulk["per_s"], tx),
        "intake_vs_anchor_publish": ratio(taken["per_s"], anchors["publish_per_s"]),
        "intake_floor_per_s": _round(floor["per_s"]),
        "intake_floor_p99_ms": floor["p99_ms"],
        "intake_floor_vs_anchor_publish": ratio(floor["per_s"], anchors["publish_per_s"]),
        "intake_vs_floor": ratio(taken["per_s"], floor["per_s"]),
        "drain_vs_anchor_noop": ratio(drained["per_s"], anchors["noop_per_s"]),
        "drain_vs_pgbench": ratio(drained["per_s"], pg),
        "line_growth_ratio": ratio(largest, per_line.get("10")),
        "ledger_growth_ratio": ratio(by_lines[-1]["median_ms"], by_lines[0]["median_ms"]),
        "worker_rss_mb": phases["memory"]["after_2n_mb"],
        "worker_rss_growth_mb": phases["memory"]["growth_mb"],
        "machine": machine,
        "settings": settings,
        "data_set": data,
        "anchors": anchors,
        **phases,
    }
    results["targets"] = judge(results)
    return results


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _max(rss: dict[str, Any]) -> float:
    return max(rss["children_mb"].values(), default=0.0)


def _memory(after_n: dict[str, Any], after_2n: dict[str, Any]) -> dict[str, Any]:
    """Per pool process: the largest, and the largest growth of one process."""
    growth = [
        after_2n["children_mb"][pid] - mb
        for pid, mb in after_n["children_mb"].items()
        if pid in after_2n["children_mb"]
    ]
    return {
        "after_n_mb": round(_max(after_n), 1),
        "after_2n_mb": round(_max(after_2n), 1),
        "growth_mb": round(max(growth), 1) if growth else None,
        "main_process_mb": round(after_2n["main_mb"], 1),
        "pool_processes": {str(k): round(v, 1) for k, v in after_2n["children_mb"].items()},
    }


# The anchors a ratio divides by, measured before the service's phases and again after
# them: on a shared machine either alone can catch a fast or a slow moment.
BRACKETED = ("noop_per_s", "tx_per_s", "publish_per_s")


def _bracket(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Each anchor's mean of its two rounds (what the ratios use), and both rounds."""
    means: dict[str, Any] = {}
    for key in BRACKETED:
        pair = [r[key] for r in (before, after) if r[key] is not None]
        means[key] = sum(pair) / len(pair) if pair else None
        means[f"{key}_after_vs_before"] = (
            round(after[key] / before[key], 3) if len(pair) == 2 and before[key] else None
        )
    return {**means, "before": before, "after": after}


def _anchors(bench: Bench, scale: Scale, cores: int, say: Progress, label: str) -> dict[str, Any]:
    from bench import anchors, measure

    say(
        f"anchors, {label} the service: (a) and (c) publish {scale.noop:,} no-op tasks, "
        f"(b) {scale.tx:,} one-tx tasks"
    )
    anchors.create_tpcb_tables()
    rng = random.Random(5)  # noqa: S311 - account numbers, not security
    # connections, not timed
    anchors.publish(anchors.noop, 100, f"bench-warm-{label}", lambda i: (i,))
    noop = f"bench-noop-{label}"
    publish_per_s = anchors.publish(anchors.noop, scale.noop, noop, lambda i: (i,))
    tx_args = [
        (rng.randint(1, anchors.ACCOUNTS), rng.randint(-5000, 5000)) for _ in range(scale.tx)
    ]
    anchors.publish(anchors.tpcb, scale.tx, f"bench-tpcb-{label}", lambda i: tx_args[i])
    listener = anchors.Completions(noop)
    listener.start()
    worker = bench.start_worker(cores, include="bench.anchors")
    try:
        watch = measure.Watch(worker.pid)
        # The one-tx tasks are queued behind the no-ops: when they are done, all are.
        measure.wait_for(
            lambda: anchors.tpcb_completions()[0],
            scale.tx,
            300 + scale.tx + scale.noop / 10,
            watch,
            "anchor tasks",
        )
        time.sleep(0.5)  # the last no-op events in flight
    finally:
        listener.stop()
        bench.stop(worker)
    count, tx_first, tx_last = anchors.tpcb_completions()
    tx_per_s = (count - 1) / (tx_last - tx_first) if tx_first and tx_last and count > 1 else None
    found = {
        "noop_per_s": measure.rate_first_to_last(listener.times),
        "noop_events_seen": len(listener.times),
        "tx_per_s": tx_per_s,
        "publish_per_s": publish_per_s,
        "tx_cpu_per_task": watch.cpu_per_item_ms(),
        "noop_n": scale.noop,
        "tx_n": scale.tx,
    }
    say(
        f"  no-op {found['noop_per_s'] or 0:,.0f}/s, one-tx {tx_per_s or 0:,.0f}/s, "
        f"publish {publish_per_s:,.0f}/s"
    )
    return found


def _ledger_growth(bench: Bench, scale: Scale) -> dict[str, Any]:
    """One reversal's latency in a ledger of the smaller size and in one of the larger.

    Two databases of their own, filled to each size with clones of a template that
    has one purchase already reversed, then probed in turn (one reversal in the
    small ledger, one in the large, ...): the machine's load, shared with others,
    drifts over minutes and must not fall on one size only.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import sessionmaker

    from bench import dataset, measure
    from worker.settings import get_settings, to_sqlalchemy_url

    settings = get_settings()
    warm, probes = 3, scale.ledger_probes
    needed = warm + probes
    engines = [
        create_engine(
            to_sqlalchemy_url(url),
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_pre_ping=True,
        )
        for url in bench.ledger_urls
    ]
    try:
        worlds, ids, sizes = [], [], []
        filled = time.perf_counter()
        for engine, size in zip(engines, scale.ledger_sizes, strict=True):
            world = dataset.World.create(sessionmaker(bind=engine, expire_on_commit=False))
            template = dataset.make_template(world, reversed_targets=1)
            clones = max(needed, math.ceil((size - dataset.count_lines(engine)) / template.lines))
            dataset.clone(engine, template, 1, clones)
            dataset.check(world.factory, dataset.customers(template, range(1, 4)))
            dataset.analyze(engine)
            worlds.append(world)
            ids.append([dataset.derive(template.targets[0], n) for n in range(1, needed + 1)])
            sizes.append(dataset.count_lines(engine))
        fill_s = time.perf_counter() - filled
        with contextlib.suppress(Exception), engines[0].connect() as conn:
            # The fill's dirty pages are written now, not during the probes (superuser
            # or pg_checkpoint only; without it the probes share the disk with them).
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("CHECKPOINT"))
        measure.ledger_probe(worlds, [i[:warm] for i in ids])
        probed = measure.ledger_probe(worlds, [i[warm:] for i in ids])
    finally:
        for engine in engines:
            engine.dispose()
    return {
        "by_lines": {str(size): result for size, result in zip(sizes, probed, strict=True)},
        "fill_seconds": round(fill_s, 1),
        "order": "interleaved: one reversal per ledger in turn",
    }


def _machine(engine: Any, cores: int) -> tuple[dict[str, Any], dict[str, Any]]:
    import celery
    import psutil  # type: ignore[import-untyped]  # psutil ships no type information
    from sqlalchemy import text

    from worker.celery_app import app

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with engine.connect() as conn:

        def show(name: str) -> str:
            return str(conn.execute(text(f"SHOW {name}")).scalar_one())

        server = show("server_version")
        settings = {
            "pool": "prefork",
            "concurrency": cores,
            "task_acks_late": bool(app.conf.task_acks_late),
            "task_reject_on_worker_lost": bool(app.conf.task_reject_on_worker_lost),
            "worker_prefetch_multiplier": int(app.conf.worker_prefetch_multiplier),
            "synchronous_commit": show("synchronous_commit"),
            "fsync": show("fsync"),
            "shared_buffers": show("shared_buffers"),
            "db_pool_size": int(engine.pool.size()),
        }
    machine = {
        "cores": cores,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": server.split(" ")[0],
        "celery": celery.__version__,
    }
    return machine, settings
