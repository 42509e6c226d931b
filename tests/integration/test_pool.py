"""Connections back from the pool (worker.db.ping_after_idle) on the real PostgreSQL:
one that died while idle is replaced before use; one in use a moment ago is not
pinged, so its death surfaces once, as a disconnect, and the pool starts afresh."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from worker.db import ping_after_idle


def _pool(engine: Any, idle_s: float) -> Iterator[Engine]:
    pool = create_engine(engine.url, pool_size=1, max_overflow=0, pool_use_lifo=True)
    ping_after_idle(pool, idle_s)
    yield pool
    pool.dispose()


@pytest.fixture()
def pinged(engine: Any) -> Iterator[Engine]:
    """Every connection that comes back from the pool counts as idle."""
    yield from _pool(engine, 0.0)


@pytest.fixture()
def busy(engine: Any) -> Iterator[Engine]:
    """No connection that comes back from the pool counts as idle."""
    yield from _pool(engine, 3600.0)


def _backend(pool: Engine) -> int:
    with pool.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill(engine: Any, pid: int) -> None:
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
        conn.commit()


def test_a_connection_that_died_while_idle_is_replaced_before_use(
    engine: Any, pinged: Engine
) -> None:
    first = _backend(pinged)
    assert _backend(pinged) == first  # alive: the ping kept it
    _kill(engine, first)
    second = _backend(pinged)  # no error: the ping found it dead, the pool reconnected
    assert second != first


def test_a_connection_in_use_a_moment_ago_is_not_pinged(engine: Any, busy: Engine) -> None:
    first = _backend(busy)
    _kill(engine, first)
    with pytest.raises(DBAPIError) as caught, busy.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert caught.value.connection_invalidated
    assert _backend(busy) != first  # the next one is new


@pytest.mark.parametrize(
    ("error", "status"),
    [
        # A pooled connection found dead while in use.
        (DBAPIError("SELECT 1", {}, OSError("closed"), connection_invalidated=True), 503),
        # No connection at all (PostgreSQL down), or a deadlock: what the worker retries.
        (OperationalError("SELECT 1", {}, OSError("refused")), 503),
        # Anything else the database refuses is a bug of ours.
        (IntegrityError("INSERT", {}, OSError("duplicate key")), 500),
    ],
)
def test_a_database_that_cannot_answer_gives_503_and_other_database_errors_500(
    db_factory: Any, error: DBAPIError, status: int
) -> None:
    from fastapi.testclient import TestClient

    from api_stub.app import create_app
    from worker.settings import get_settings

    app = create_app(get_settings(), session_factory=db_factory)

    def failing() -> None:
        raise error

    app.add_api_route("/failing", failing)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/failing")
    assert answer.status_code == status
    if status == 503:
        assert answer.json()["error"]["code"] == "database_unavailable"
        assert answer.headers["Retry-After"] == "1"
