"""Celery tasks: thin. They take ids, re-read rows, and call worker.processing.

Transient errors (database or broker unreachable, serialization failure,
deadlock) retry with exponential backoff and full jitter; permanent ones end the
event FAILED at once. After the last retry the event is FAILED and the message
is kept in the dead-letter table.
"""

from __future__ import annotations

import json
import random
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import structlog
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError

from worker import poison  # noqa: F401 - connects the poison-message signal handlers
from worker.celery_app import app
from worker.db import unit_of_work
from worker.maintenance import expire_lines, expire_reservations
from worker.models import Event
from worker.processing import (
    BATCH_TASK,
    DONE,
    counted,
    deliver,
    deliver_batch,
    fail_event,
    finished_messages,
)
from worker.settings import get_settings
from worker.sweeper import sweep

log = structlog.get_logger(__name__)
T = TypeVar("T")

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


MAX_KEPT_PAYLOAD = 64 * 1024  # what of a bad body a dead letter keeps: enough to diagnose it
MAX_ID_LENGTH = 64  # the width of the queue_message_id and task_id columns


def undecodable(
    event_id: Any, message_id: Any, extra: tuple[Any, ...], unknown: dict[str, Any]
) -> str | None:
    """Why a task body is not (event id, message id), or None when it is."""
    if extra or unknown:
        return f"unexpected arguments: {len(extra)} extra, keywords {_shown(sorted(unknown))}"
    if not isinstance(event_id, str):
        return f"event id is {type(event_id).__name__}, not a UUID string"
    if not _is_uuid(event_id):
        return f"undecodable event id {_shown(event_id)}"
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_ID_LENGTH:
        return f"undecodable message id {_shown(message_id)}"
    if not message_id.isprintable():  # NUL, control characters, lone surrogates
        return f"undecodable message id {_shown(message_id)}"
    return None


def _is_uuid(text: str) -> bool:
    if len(text) > MAX_ID_LENGTH:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _shown(value: Any) -> str:
    # ascii() escapes NUL and lone surrogates, which PostgreSQL text refuses.
    text = ascii(value)
    return text if len(text) <= 200 else text[:200] + f"... ({len(text)} characters)"


def run(
    task: Any, /, event_id: Any = None, message_id: Any = None, *extra: Any, **unknown: Any
) -> str | dict[str, int]:
    """One delivery. Every argument is optional so that a truncated, padded or
    wrong-typed body reaches this check and becomes a dead letter, instead of a
    TypeError in Celery's call that leaves only a log line.

    Returns the event's outcome; when the delivery took other waiting reversals
    along, every outcome counted, as a batch's are (what the metrics count)."""
    problem = undecodable(event_id, message_id, extra, unknown)
    if problem is not None:
        return _refuse(task, message_id, problem)
    parsed = uuid.UUID(event_id)

    def work() -> str | dict[str, int]:
        delivery = deliver(parsed, message_id)
        revoke_taken(delivery.taken)
        return _outcomes(delivery.outcomes)

    return _deliver(task, message_id, work, stranded=lambda: [parsed], event_id=event_id)


def revoke_taken(message_ids: Sequence[str]) -> None:
    """Have the workers drop, unopened, the messages of reversals a delivery took
    along and committed (Celery's revoke, by task id), those with no event left in
    flight: a batch's message whose other events were not taken still has work.

    Each would otherwise cost a whole delivery only to find its events done: a pool
    process, a claim and a read. Dropping it is a shortcut and nothing more: a
    worker the broadcast misses (one started later, or a broadcast lost) delivers
    the message, which finds its events done and changes nothing (IGNORED).
    """
    if not message_ids:
        return
    try:
        with unit_of_work() as session:
            finished = finished_messages(session, message_ids)
        if finished:
            app.control.revoke(finished)
    except Exception:
        log.warning("revoke_failed", messages=len(message_ids), exc_info=True)


def _outcomes(decided: dict[uuid.UUID, str]) -> str | dict[str, int]:
    if len(decided) == 1:
        return next(iter(decided.values()))
    return dict(Counter(decided.values()))


def _refuse(task: Any, message_id: Any, problem: str) -> str:
    """A body that is not the task's: FAILED, kept as a dead letter."""
    log.error("undecodable_task_body", task_name=task.name, error=problem)
    _dead_letter(task, None, message_id if isinstance(message_id, str) else "", problem)
    return "FAILED"


def _deliver(
    task: Any,
    message_id: str,
    work: Callable[[], T],
    stranded: Callable[[], Iterable[uuid.UUID]],
    **context: Any,
) -> T | str:
    """Run a delivery's work: transient errors retry with backoff; a permanent one, or
    the last retry, ends the `stranded` events FAILED, each with its dead letter."""
    structlog.contextvars.bind_contextvars(
        queue_message_id=message_id, attempt=task.request.retries + 1, **context
    )
    try:
        return work()
    except Exception as exc:
        if is_transient(exc) and task.request.retries < get_settings().task_max_retries:
            delay = backoff(task.request.retries)
            log.warning("transient_error_retrying", error=str(exc), countdown=round(delay, 2))
            raise task.retry(exc=exc, countdown=delay) from exc
        log.error("task_failed", error=str(exc), exc_info=True)
        for event_id in stranded():
            _dead_letter(task, event_id, message_id, f"{type(exc).__name__}: {exc}")
        return "FAILED"
    finally:
        structlog.contextvars.clear_contextvars()


def _storable(args: Any, kwargs: Any) -> dict[str, Any]:
    """The body as a dead letter keeps it: as it came when PostgreSQL can store it
    (no NUL, no lone surrogate) and it is small, else its escaped, cut repr."""
    body = {"args": list(args or []), "kwargs": dict(kwargs or {})}
    try:
        text = json.dumps(body, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # a lone surrogate fails here
    except (TypeError, ValueError):
        text = None
    if text is not None and len(text) <= MAX_KEPT_PAYLOAD and "\\u0000" not in text:
        return body
    shown = ascii(body)
    return {"unstorable": True, "repr": shown[:MAX_KEPT_PAYLOAD], "repr_length": len(shown)}


def _dead_letter(task: Any, event_id: uuid.UUID | None, message_id: str, error: str) -> None:
    letter = {
        "task_name": task.name,
        "task_id": str(task.request.id or message_id)[:MAX_ID_LENGTH],
        "payload": _storable(task.request.args, task.request.kwargs),
        "traceback": traceback.format_exc(),
        "attempts": task.request.retries + 1,
    }
    fail_event(event_id, message_id, error, dead_letter=letter)


@app.task(bind=True, name="reversals.process_event", acks_late=True)
def process_event(self: Any, *args: Any, **kwargs: Any) -> str | dict[str, int]:
    return run(self, *args, **kwargs)


@app.task(bind=True, name="reversals.reverse_event", acks_late=True)
def reverse_event(self: Any, *args: Any, **kwargs: Any) -> str | dict[str, int]:
    return run(self, *args, **kwargs)


MAX_BATCH = 1000  # a bulk request's size (SPEC §4): no message of ours holds more


def batch_problem(
    message_id: Any, event_ids: Any, extra: tuple[Any, ...], unknown: Any
) -> str | None:
    """Why a batch body is not (message id, [event ids]), or None when it is."""
    if extra or unknown:
        return f"unexpected arguments: {len(extra)} extra, keywords {_shown(sorted(unknown))}"
    if not isinstance(event_ids, list) or not 0 < len(event_ids) <= MAX_BATCH:
        return f"event ids are not a list of 1 to {MAX_BATCH}: {_shown(event_ids)}"
    for event_id in event_ids:
        problem = undecodable(event_id, message_id, (), {})
        if problem is not None:
            return problem
    return None


def run_batch(
    task: Any, /, message_id: Any = None, event_ids: Any = None, *extra: Any, **unknown: Any
) -> dict[str, int] | str:
    """One delivery of a bulk request's message: its events one after another.

    A transient error retries the whole message (the events already done are no
    longer in flight and are skipped); a permanent one, or the last retry, ends
    every event still in flight FAILED, each with its dead letter.
    """
    problem = batch_problem(message_id, event_ids, extra, unknown)
    if problem is not None:
        return _refuse(task, message_id, problem)
    ids = [uuid.UUID(e) for e in event_ids]

    def work() -> dict[str, int]:
        delivery = deliver_batch(ids, message_id)
        revoke_taken(delivery.taken)
        return counted(delivery, ids)

    return _deliver(
        task,
        message_id,
        work,
        stranded=lambda: in_flight(ids, message_id),
        batch=len(ids),
    )


def in_flight(event_ids: list[uuid.UUID], message_id: str) -> list[uuid.UUID]:
    """Those of these events that this message still owns and that are not done."""
    with unit_of_work() as session:
        return list(
            session.scalars(
                select(Event.id)
                .where(
                    Event.id.in_(event_ids),
                    Event.queue_message_id == message_id,
                    Event.status.not_in(DONE),  # by id, not ix_events_in_flight (claim)
                )
                .order_by(Event.id)
            )
        )


@app.task(bind=True, name=BATCH_TASK, acks_late=True)
def reverse_events(self: Any, *args: Any, **kwargs: Any) -> dict[str, int] | str:
    return run_batch(self, *args, **kwargs)


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
