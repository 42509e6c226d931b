"""`reversals`: run, migrate and administer the service (SPEC §2, §8)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

from worker.settings import get_settings


def _urls() -> Any:
    """Use DATABASE_URL and BROKER_URL, or the embedded engines where they are unset."""
    from worker import embedded

    settings = get_settings()
    return embedded.ensure(settings.state_dir, settings.database_url, settings.broker_url)


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args]


def _worker_cmd(concurrency: int | None, queues: str, pool: str, loglevel: str) -> list[str]:
    cmd = _celery("worker", "-Q", queues, "-P", pool, "-l", loglevel, "-E")
    if concurrency:
        cmd += ["-c", str(concurrency)]
    return cmd


APP_FACTORY = "api_stub.app:app_factory"


def _api_cmd(
    host: str, port: int, workers: int | None = None, factory: str = APP_FACTORY
) -> list[str]:
    """`factory` is the service's app unless the bench serves its intake floor (bench.floor)."""
    if workers is not None and workers > 1:
        # uvicorn's supervisor and its workers, with the service's logging and the
        # workers' metrics summed (api_stub.serve).
        return [
            sys.executable,
            "-m",
            "api_stub.serve",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--factory",
            factory,
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
    ]


def _flower_cmd(port: int) -> list[str]:
    settings = get_settings()
    return _celery(
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        f"--basic-auth={settings.flower_basic_auth}",
    )


def _beat_cmd() -> list[str]:
    schedule = get_settings().state_dir.resolve() / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    return _celery("beat", "-l", "info", "-s", str(schedule))


@click.group()
def main() -> None:
    """Loyalty event reversal service."""


@main.command()
def migrate() -> None:
    """Apply the Alembic migrations to DATABASE_URL (or the embedded PostgreSQL)."""
    from worker.migrate import upgrade

    _urls()
    upgrade()
    click.echo("migrations applied")


@main.command()
@click.option("--host", default=None, help="bind address (default API_HOST)")
@click.option("--port", type=int, default=None, help="port (default API_PORT)")
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(min=1),
    default=None,
    help="uvicorn worker processes (default: cores)",
)
def api(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP intake (uvicorn), one process per core unless --workers says otherwise."""
    settings = get_settings()
    _urls()
    workers = workers or os.cpu_count() or 1
    cmd = _api_cmd(host or settings.api_host, port or settings.api_port, workers)
    os.execv(cmd[0], cmd)


@main.command()
@click.option("--concurrency", "-c", type=int, default=None, help="processes (default: cores)")
@click.option("--queues", "-Q", default=None, help="queues to consume (default QUEUE)")
@click.option("--pool", "-P", default="prefork", show_default=True)
@click.option("--loglevel", "-l", default="info", show_default=True)
def worker(concurrency: int | None, queues: str | None, pool: str, loglevel: str) -> None:
    """Run a Celery worker. Start more, on any machine, to scale."""
    _urls()
    cmd = _worker_cmd(concurrency, queues or get_settings().queue, pool, loglevel)
    os.execv(cmd[0], cmd)


@main.command()
def beat() -> None:
    """Run Celery beat: the sweeper of stuck requests."""
    _urls()
    cmd = _beat_cmd()
    os.execv(cmd[0], cmd)


@main.command()
@click.option("--port", type=int, default=None, help="port (default FLOWER_PORT)")
def flower(port: int | None) -> None:
    """Run Flower, Celery's dashboard, behind basic auth."""
    _urls()
    cmd = _flower_cmd(port or get_settings().flower_port)
    os.execv(cmd[0], cmd)


@main.group()
def brand() -> None:
    """Brands and their API keys."""


@brand.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help='print {"brand_id": ..., "api_key": ...}')
def brand_create(name: str, as_json: bool) -> None:
    """Create a brand and print its id and API key (shown once; only its hash is kept)."""
    from api_stub.auth import create_brand
    from worker.db import unit_of_work

    _urls()
    with unit_of_work() as session:
        created, key = create_brand(session, name)
        brand_id = str(created.id)
    if as_json:
        click.echo(json.dumps({"brand_id": brand_id, "api_key": key}))
    else:
        click.echo(f"brand_id: {brand_id}\napi_key:  {key}\n(the key is shown once: keep it)")


@brand.command("add-key")
@click.argument("brand_id", type=click.UUID)
@click.option(
    "--json", "as_json", is_flag=True, help='print {"brand_id", "key_id", "prefix", "api_key"}'
)
def brand_add_key(brand_id: uuid.UUID, as_json: bool) -> None:
    """Give a brand another API key (to rotate: add one, move clients, revoke the old)."""
    from api_stub.auth import PREFIX_LENGTH, create_api_key, find_key
    from worker.db import unit_of_work
    from worker.models import Brand

    _urls()
    with unit_of_work() as session:
        if session.get(Brand, brand_id) is None:
            raise click.ClickException(f"no brand {brand_id}")
        key = create_api_key(session, brand_id)
        key_id = str(find_key(session, key).id)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "brand_id": str(brand_id),
                    "key_id": key_id,
                    "prefix": key[:PREFIX_LENGTH],
                    "api_key": key,
                }
            )
        )
    else:
        click.echo(f"key_id:  {key_id}\napi_key: {key}\n(the key is shown once: keep it)")


@brand.command("revoke-key")
@click.argument("key_prefix")
@click.option("--brand", "brand_id", type=click.UUID, default=None, help="only this brand's keys")
def brand_revoke_key(key_prefix: str, brand_id: uuid.UUID | None) -> None:
    """Revoke an API key by its prefix (rk_ and 5 characters), its id or the whole key.

    Its tokens stop working at once.
    """
    from api_stub.auth import KeyNotFound, revoke_api_key
    from worker.db import unit_of_work

    _urls()
    try:
        with unit_of_work() as session:
            key = revoke_api_key(session, brand_id, key_prefix)
            revoked = (
                f"key {key.id} ({key.prefix}) of brand {key.brand_id} revoked at {key.revoked_at}"
            )
    except KeyNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(revoked)


@main.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--flower-port", type=int, default=None)
@click.option("--concurrency", "-c", type=int, default=None)
def up(
    host: str | None, port: int | None, flower_port: int | None, concurrency: int | None
) -> None:
    """Migrate, then run api, worker, beat and Flower together; Ctrl-C stops them all."""
    from worker.migrate import upgrade

    settings = get_settings()
    handle = _urls()
    upgrade()
    host, port = host or settings.api_host, port or settings.api_port
    flower_port = flower_port or settings.flower_port
    demo_key = _demo_brand(settings.state_dir)
    commands = {
        "api": _api_cmd(host, port),
        "worker": _worker_cmd(concurrency, settings.queue, "prefork", "info"),
        "beat": _beat_cmd(),
        "flower": _flower_cmd(flower_port),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, cmd in commands.items():
            # Own process groups: we stop each group ourselves, children included.
            procs[name] = subprocess.Popen(cmd, start_new_session=True)
        click.echo(
            f"api     http://{host}:{port}/api/storefront/v1   (docs: http://{host}:{port}/docs)"
        )
        click.echo(
            f"flower  http://127.0.0.1:{flower_port}   (user:password {settings.flower_basic_auth})"
        )
        click.echo(f"database {os.environ['DATABASE_URL']}")
        click.echo(f"broker   {os.environ['BROKER_URL']}")
        if demo_key:
            click.echo(f"demo brand API key (shown once): {demo_key}")
        click.echo("Ctrl-C stops everything.")
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    click.echo(f"{name} exited with {proc.returncode}; stopping", err=True)
                    stopping = True
            time.sleep(0.3)
    finally:
        _stop_all(procs)
        handle.stop()
        click.echo("stopped")


def _stop_all(procs: dict[str, subprocess.Popen[bytes]], grace: float = 15) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _demo_brand(state_dir: Path) -> str | None:
    """Create the demo brand, rewards and campaign on first start; return its key then only."""
    from api_stub.auth import create_brand
    from worker.db import unit_of_work
    from worker.models import Brand, Campaign, Reward

    marker = state_dir.resolve() / "demo-brand-id"
    with unit_of_work() as session:
        known = uuid.UUID(marker.read_text().strip()) if marker.exists() else None
        if known is not None and session.get(Brand, known) is not None:
            return None
        demo, key = create_brand(
            session,
            "demo",
            {
                "shortfall": "negative",
                "tiers": [
                    {"name": "SILVER", "min_points": 0},
                    {"name": "GOLD", "min_points": 1000},
                ],
            },
        )
        if session.get(Reward, DEMO_POINTS) is None:
            session.add(
                Reward(id=DEMO_POINTS, brand_id=demo.id, type="POINTS", name="Points", cost=0)
            )
        if session.get(Campaign, DEMO_CAMPAIGN) is None:
            session.add(
                Campaign(id=DEMO_CAMPAIGN, brand_id=demo.id, name="Welcome", funded_by="MARKETING")
            )
        marker.write_text(str(demo.id))
        return key


DEMO_POINTS = uuid.UUID("00000000-0000-4000-8000-000000000001")
DEMO_CAMPAIGN = uuid.UUID("00000000-0000-4000-8000-000000000002")


def _register() -> None:
    from worker.chaos import chaos_command
    from worker.dead_letters import dlq

    main.add_command(dlq)
    main.add_command(chaos_command)
    try:
        from bench.run import bench
    except ModuleNotFoundError as exc:  # an image built without bench/ (a dev tool) still runs
        if exc.name not in ("bench", "bench.run"):
            raise
    else:
        main.add_command(bench)


_register()

from worker.seed import seed_command  # noqa: E402 - registered once `main` exists
from worker.status import status  # noqa: E402 - registered once `main` exists

main.add_command(seed_command)
main.add_command(status)


if __name__ == "__main__":
    sys.exit(main())
