"""Engine, sessions and the unit of work.

One transaction per request and per task, owned by the wrapper (the API's
dependency, the task's runner), never by domain code. Messages are published
only after the commit succeeds: callers register them with `on_commit`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import structlog
from celery import signals
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from worker.settings import get_settings

log = structlog.get_logger(__name__)

AFTER_COMMIT_KEY = "after_commit"


# A connection back from the pool is pinged only if it sat idle this long: a busy
# process reuses its connections within milliseconds, and a ping per checkout was a
# round trip in every request and task (7% of a reversal's time).
PING_AFTER_IDLE_S = 1.0


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    settings = get_settings()
    engine = create_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        # Most recently used first: under load the same few connections stay hot,
        # and the idle ones are those a restart may have left dead, pinged on return.
        pool_use_lifo=True,
        future=True,
    )
    ping_after_idle(engine, PING_AFTER_IDLE_S)
    return engine


def ping_after_idle(engine: Engine, idle_s: float) -> None:
    """`pool_pre_ping`, for connections idle at least `idle_s` only.

    A connection found dead is replaced before anyone uses it (the pool retries the
    checkout). One that dies while in use (PostgreSQL restarted under load) fails
    its statement as a disconnect: SQLAlchemy then drops every pooled connection
    of that moment, and the task retries, or the request answers 503.
    """

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi: object, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi: DBAPIConnection, record: ConnectionPoolEntry, _proxy: object) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < idle_s:
            return  # a new connection, or one in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(str(exc)) from exc
        if not alive:
            raise DisconnectionError("the connection did not answer its ping")


_IDLE_SINCE = "idle_since"


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def on_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the session's transaction has committed, never before."""
    session.info.setdefault(AFTER_COMMIT_KEY, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    callbacks: list[Callable[[], None]] = session.info.pop(AFTER_COMMIT_KEY, [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            # The row is committed; the sweeper publishes what failed here (SPEC §7).
            log.exception("after_commit_callback_failed")


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop(AFTER_COMMIT_KEY, None)


@contextmanager
def unit_of_work(factory: Callable[[], Session] | None = None) -> Iterator[Session]:
    """A session whose transaction commits when the block ends and rolls back on error."""
    session = (factory or get_sessionmaker())()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def _own_pool_per_child(**_: object) -> None:
    """A pool process must not share its parent's connections (the parent writes
    poison-message dead letters): drop the inherited pool without closing the
    parent's sockets; the child opens its own on first use."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


signals.worker_process_init.connect(_own_pool_per_child, weak=False)
