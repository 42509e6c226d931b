"""Test set-up: real PostgreSQL and real Redis, never mocks.

With DATABASE_URL and BROKER_URL set (CI), a fresh database `<db>_pytest_<pid>`
is made on that server, and Redis database 9 with a queue of the run's own. With neither set
(a fresh machine), the embedded engines start under .reversals/test, the same
code path `reversals up` takes. Migrations are applied with Alembic, so every
run tests them too.

Unit and integration tests get a session bound to one connection whose outer
transaction is rolled back after the test (commits inside become savepoints).
End-to-end tests run against committed data with their own brand.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from worker.procs import alive

ROOT = Path(__file__).resolve().parents[1]
_embedded: Any = None


def _with_db(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = re.sub(r"/[^/]*$", f"/{name}", base)
    return f"{base}?{query}" if query else base


def _db_name(url: str) -> str:
    return url.partition("?")[0].rsplit("/", 1)[1] or "postgres"


def pytest_configure(config: pytest.Config) -> None:
    global _embedded  # noqa: PLW0603 - pytest hooks share state only through the module
    if os.environ.get("REVERSALS_TEST_CONFIGURED"):
        return
    os.environ["ENVIRONMENT"] = "test"
    os.environ.setdefault("JWT_SECRET", "test-secret-0123456789abcdef0123456789abcdef")
    # Short timings so fault and sweeper tests finish quickly.
    os.environ.setdefault("BROKER_VISIBILITY_TIMEOUT", "30")
    os.environ.setdefault("PENDING_LEASE", "3")
    os.environ.setdefault("SWEEP_INTERVAL", "1")
    os.environ.setdefault("TASK_RETRY_BASE_DELAY", "0.2")
    database_url = os.environ.get("DATABASE_URL", "")
    broker_url = os.environ.get("BROKER_URL", "")
    if not database_url or not broker_url:
        from worker import embedded

        _embedded = embedded.ensure(ROOT / ".reversals" / "test", database_url, broker_url)
        database_url, broker_url = os.environ["DATABASE_URL"], os.environ["BROKER_URL"]

    # Each run has its own database and queue, so runs on one machine never meet.
    run_id = f"{os.getpid()}"
    prefix = f"{_db_name(database_url)}_pytest_"
    test_db = f"{prefix}{run_id}"
    os.environ["QUEUE"] = f"reversals_test_{run_id}"
    from worker.settings import to_sqlalchemy_url

    admin = to_sqlalchemy_url(database_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        names = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
        ).fetchall()
        for (name,) in names:
            # A run's database is named after its pid: drop only those whose run is gone.
            if not alive(int(name.rsplit("_", 1)[1])):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{test_db}"')
    os.environ["DATABASE_URL"] = _with_db(database_url, test_db)
    os.environ["BROKER_URL"] = re.sub(r"/\d*$", "", broker_url.rstrip("/")) + "/9"
    os.environ["REVERSALS_TEST_CONFIGURED"] = "1"

    from worker.migrate import upgrade
    from worker.settings import get_settings

    get_settings.cache_clear()
    upgrade()


def pytest_unconfigure(config: pytest.Config) -> None:
    from worker.db import get_engine

    get_engine().dispose()
    url = os.environ["DATABASE_URL"]
    admin = _with_db(url, "postgres").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_db_name(url)}" WITH (FORCE)')
    if _embedded is not None:
        _embedded.stop()


@pytest.fixture(scope="session")
def engine() -> Any:
    from worker.db import get_engine

    return get_engine()


@pytest.fixture()
def db_factory(engine: Any) -> Iterator[Callable[[], Any]]:
    """Sessions on one connection whose outer transaction is rolled back after the test."""
    from sqlalchemy.orm import Session

    connection = engine.connect()
    outer = connection.begin()

    def factory() -> Session:
        return Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )

    yield factory
    outer.rollback()
    connection.close()


@pytest.fixture()
def db(db_factory: Callable[[], Any]) -> Iterator[Any]:
    session = db_factory()
    yield session
    session.close()


@pytest.fixture()
def world(db_factory: Callable[[], Any]) -> Any:
    from tests.support import World

    return World.create(db_factory)


@pytest.fixture()
def client(db_factory: Callable[[], Any]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from api_stub.app import create_app
    from worker.settings import get_settings

    with TestClient(create_app(get_settings(), session_factory=db_factory)) as test_client:
        yield test_client


@pytest.fixture()
def headers(client: Any, world: Any) -> dict[str, str]:
    answer = client.get("/api/storefront/v1/auth/authorize", headers={"x-api-key": world.api_key})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['data']['access_token']}"}
