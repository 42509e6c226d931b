"""Celery tasks: thin. They take ids, re-read rows, and call worker.processing.

Transient errors (database or broker unreachable, serialization failure,
deadlock) retry with exponential backoff and full jitter; permanent ones end the
event FAILED at once. After the last retry the event is FAILED and the message
is kept in the dead-letter table.
"""

from __future__ import annotations

import random
import traceback
import uuid
from typing import Any

import structlog
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError, OperationalError

from worker import poison  # noqa: F401 - connects the poison-message signal handlers
from worker.celery_app import app
from worker.maintenance import expire_lines, expire_reservations
from worker.processing import fail_event, handle_message
from worker.settings import get_settings
from worker.sweeper import sweep

log = structlog.get_logger(__name__)

TRANSIENT: tuple[type[BaseException], ...] = (
    OperationalError,  # connection lost, serialization failure, deadlock (psycopg maps them here)
    KombuOperationalError,
    RedisConnectionError,
    ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter, capped below the visibility timeout."""
    settings = get_settings()
    cap = min(settings.max_retry_delay, settings.task_retry_base_delay * 2**retries)
    return random.uniform(cap / 2, cap)  # noqa: S311 - jitter, not security


def run(task: Any, event_id: str, message_id: str) -> str:
    settings = get_settings()
    try:
        parsed = uuid.UUID(event_id)
    except (ValueError, TypeError, AttributeError):
        _dead_letter(task, None, message_id, f"undecodable event id {event_id!r}")
        return "FAILED"
    structlog.contextvars.bind_contextvars(
        event_id=event_id, queue_message_id=message_id, attempt=task.request.retries + 1
    )
    try:
        return handle_message(parsed, message_id)
    except Exception as exc:
        if is_transient(exc) and task.request.retries < settings.task_max_retries:
            delay = backoff(task.request.retries)
            log.warning("transient_error_retrying", error=str(exc), countdown=round(delay, 2))
            raise task.retry(exc=exc, countdown=delay) from exc
        log.error("task_failed", error=str(exc), exc_info=True)
        _dead_letter(task, parsed, message_id, f"{type(exc).__name__}: {exc}")
        return "FAILED"
    finally:
        structlog.contextvars.clear_contextvars()


def _dead_letter(task: Any, event_id: uuid.UUID | None, message_id: str, error: str) -> None:
    letter = {
        "task_name": task.name,
        "task_id": task.request.id or message_id,
        "payload": {"args": list(task.request.args or []), "kwargs": task.request.kwargs or {}},
        "traceback": traceback.format_exc(),
        "attempts": task.request.retries + 1,
    }
    fail_event(event_id, message_id, error, dead_letter=letter)


@app.task(bind=True, name="reversals.process_event", acks_late=True)
def process_event(self: Any, event_id: str, message_id: str) -> str:
    return run(self, event_id, message_id)


@app.task(bind=True, name="reversals.reverse_event", acks_late=True)
def reverse_event(self: Any, event_id: str, message_id: str) -> str:
    return run(self, event_id, message_id)


@app.task(name="reversals.sweep", ignore_result=True)
def sweep_stuck() -> int:
    count = sweep(get_settings().pending_lease)
    if count:
        log.info("swept", republished=count)
    return count


@app.task(name="reversals.expire_lines", ignore_result=True)
def expire_lines_task() -> int:
    return expire_lines()


@app.task(name="reversals.expire_reservations", ignore_result=True)
def expire_reservations_task() -> int:
    return expire_reservations()
