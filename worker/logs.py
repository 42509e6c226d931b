"""Logging shared by every process: one JSON object per line on stderr.

structlog's loggers and the standard library's (Celery, uvicorn, SQLAlchemy,
warnings) go through one handler and one renderer, so every line is JSON.

Context on every line:
- structlog's contextvars: the api binds the request (api_stub.app), worker.tasks
  binds event_id, queue_message_id and attempt, worker.processing adds brand_id.
- the task's own context, set here on `task_prerun` and dropped on `task_postrun`:
  it outlives worker.tasks clearing its contextvars, so Celery's own lines about the
  task ("Task ... succeeded") carry event_id, brand_id, queue_message_id and attempt too.
- Celery's "Task ... received" line (the main process, before any task code runs)
  gets the task id and the event id from the message.

Secrets never reach the output: the rendered line is scrubbed of API keys, JWTs,
the configured JWT_SECRET and passwords in URLs, whatever logged them.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import structlog
from celery import signals

EVENT_TASKS = ("reversals.process_event", "reversals.reverse_event")
TASK_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("reversals_task", default=None)

_API_KEY = re.compile(r"rk_[A-Za-z0-9_\-]{16,}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*")
_URL_PASSWORD = re.compile(r"(://[^:/@\s\"]+):[^@/\s\"]+@")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
REDACTED = "[redacted]"


class Redactor:
    """The last step: scrubs the rendered line, wherever a secret hid in it."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        literal = {s for s in secrets if len(s) >= 8}
        # The JSON renderer may have escaped a secret: look for both spellings.
        self.literals = sorted(literal | {json.dumps(s)[1:-1] for s in literal}, key=len)[::-1]

    def __call__(self, _: Any, __: str, line: Any) -> Any:
        if not isinstance(line, str):
            return line
        for secret in self.literals:
            line = line.replace(secret, REDACTED)
        line = _API_KEY.sub(REDACTED, line)
        line = _JWT.sub(REDACTED, line)
        return _URL_PASSWORD.sub(r"\1:***@", line)


def merge_task_context(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    context = TASK_CONTEXT.get()
    if context is not None:
        if "brand_id" in event_dict and "brand_id" not in context:
            # Learnt once the event was loaded: every later line of the task has it too.
            context["brand_id"] = event_dict["brand_id"]
        for key, value in context.items():
            event_dict.setdefault(key, value)
    return event_dict


def celery_record_fields(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Celery passes a line's task as `extra={"data": {...}}`: keep its ids as fields."""
    data = getattr(event_dict.get("_record"), "data", None)
    if not isinstance(data, dict):
        return event_dict
    task_id, name = data.get("id"), data.get("name")
    if task_id:
        event_dict.setdefault("task_id", str(task_id))
    if name:
        event_dict.setdefault("task", str(name))
    if name in EVENT_TASKS and task_id:
        event_dict.setdefault("queue_message_id", str(task_id))
        event_id = _first_argument(data.get("args"))
        if event_id:
            event_dict.setdefault("event_id", event_id)
    return event_dict


def _first_argument(args: Any) -> str | None:
    if isinstance(args, str):
        try:
            args = ast.literal_eval(args)
        except (ValueError, SyntaxError):
            return None
    if isinstance(args, list | tuple) and args and isinstance(args[0], str):
        return args[0] if _UUID.match(args[0]) else None
    return None


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    return value if isinstance(value, int) else logging.INFO


def _secrets() -> tuple[str, ...]:
    try:
        from worker.settings import get_settings

        return (get_settings().jwt_secret,)
    except Exception:
        # Settings that do not validate: the process is about to say why and stop.
        return ()


def configure(level: str | int = "INFO", json: bool = True) -> None:
    numeric = _level(level)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        merge_task_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, celery_record_fields],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
            Redactor(_secrets()),
        ],
    )
    # No line shows where a call was made, nor its thread or process: every record
    # skips finding them out (the logging HOWTO's "Optimization"). Measured: a seventh
    # of the access line's CPU, which the api writes for every request.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    # uvicorn installed its own plain-text handlers before the app was built: route
    # its lines through ours instead. An access log it was told to drop
    # (--no-access-log: no handler, no propagation) stays dropped.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        if uvicorn_logger.handlers or uvicorn_logger.propagate:
            uvicorn_logger.handlers = []
            uvicorn_logger.propagate = True
    logging.captureWarnings(True)


# --- Celery ------------------------------------------------------------------


def _celery_setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Connected, so Celery leaves logging to us (worker_hijack_root_logger is off too)."""
    from worker.settings import get_settings

    configure(loglevel or get_settings().log_level)


def _worker_init(options: Any = None, **_: Any) -> None:
    """Log as JSON from the worker's first moment (Celery warns before it sets logging up)."""
    from celery.apps import worker as celery_worker

    from worker.settings import get_settings

    configure((options or {}).get("loglevel") or get_settings().log_level)
    # Celery's signal handlers write their few words ("worker: Warm shutdown") raw to
    # the terminal; make them a JSON line too.
    celery_worker.safe_say = _say_as_json


def _say_as_json(message: Any, f: Any = None) -> None:
    line = {
        "event": str(message).strip(),
        "level": "warning",
        "logger": "celery.apps.worker",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    # As Celery does: one os.write, safe inside a signal handler.
    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.write(sys.stderr.fileno(), (json.dumps(line) + "\n").encode())


def _worker_started(sender: Any = None, instance: Any = None, **_: Any) -> None:
    if instance is None:
        return
    # Celery's banner is multi-line text on stdout; its facts go in one JSON line instead.
    instance.quiet = True
    try:
        queues = sorted(instance.app.amqp.queues.consume_from)
    except AttributeError:
        queues = []
    structlog.get_logger(__name__).info(
        "worker_starting",
        hostname=str(sender),
        concurrency=getattr(instance, "concurrency", None),
        queues=queues,
    )


def _task_context(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    name = str(getattr(task, "name", ""))
    context: dict[str, Any] = {"task": name, "task_id": task_id}
    if name in EVENT_TASKS:
        context["queue_message_id"] = task_id
        if args:
            context["event_id"] = str(args[0])
        context["attempt"] = int(getattr(task.request, "retries", 0) or 0) + 1
    TASK_CONTEXT.set(context)


def _task_context_done(**_: Any) -> None:
    TASK_CONTEXT.set(None)


signals.celeryd_init.connect(_worker_init)
signals.setup_logging.connect(_celery_setup_logging)
signals.celeryd_after_setup.connect(_worker_started)
signals.task_prerun.connect(_task_context)
signals.task_postrun.connect(_task_context_done)
