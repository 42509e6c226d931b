"""Poison messages: bodies that cannot be decoded, unknown tasks, invalid messages.

Celery acknowledges or rejects them and logs an error; we also keep each one as a
dead letter, so that nothing disappears with only a log line behind it.
"""

from __future__ import annotations

import traceback
from typing import Any

import structlog
from celery import signals
from celery.worker.consumer import Consumer as CeleryConsumer

from worker.db import unit_of_work
from worker.ledger.wallet import utcnow
from worker.processing import record_dead_letter

log = structlog.get_logger(__name__)
MAX_KEPT_BODY = 64 * 1024  # what of a poison body is kept: enough to diagnose it


def _body_text(message: Any) -> str:
    body = getattr(message, "body", b"")
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else repr(body)
    return _printable(text[:MAX_KEPT_BODY])


def _printable(text: str) -> str:
    # PostgreSQL text and jsonb refuse NUL; poison bodies are exactly where it appears.
    return text.replace("\x00", "\\x00")


def keep(task_name: str, task_id: str | None, message: Any, error: str) -> None:
    headers = dict(getattr(message, "headers", None) or {})
    letter = {
        "task_name": task_name,
        "task_id": task_id,
        "payload": {
            "body": _body_text(message),
            "headers": {k: str(v) for k, v in headers.items()},
        },
        "traceback": traceback.format_exc(),
        "attempts": 1,
    }
    try:
        with unit_of_work() as session:
            record_dead_letter(session, None, letter, _printable(error), utcnow())
    except Exception:
        # The message is gone either way; the log line is what remains.
        log.exception("dead_letter_write_failed", task_name=task_name, task_id=task_id)


class Consumer(CeleryConsumer):  # type: ignore[misc]  # Celery is untyped
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        keep("undecodable", None, message, f"undecodable message: {exc}")
        super().on_decode_error(message, exc)


@signals.task_unknown.connect
def _unknown(
    sender: Any = None,
    name: str = "",
    id: str = "",
    message: Any = None,
    exc: Exception | None = None,
    **_: Any,
) -> None:
    keep(name or "unknown", id or None, message, f"unknown task {name!r}")


@signals.task_rejected.connect
def _rejected(
    sender: Any = None, message: Any = None, exc: Exception | None = None, **_: Any
) -> None:
    headers = dict(getattr(message, "headers", None) or {})
    keep(
        str(headers.get("task", "invalid")),
        headers.get("id"),
        message,
        f"invalid message: {exc}" if exc else "message in an unknown format",
    )
