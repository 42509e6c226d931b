"""Publishing an event's message. Called only after the row is committed."""

from __future__ import annotations

import uuid

import structlog

from worker.celery_app import app
from worker.processing import BATCH_TASK

log = structlog.get_logger(__name__)


def publish(task_name: str, event_id: uuid.UUID, message_id: str) -> None:
    """Send the task whose id is the event's `queue_message_id`.

    A failure is logged, not raised: the row is committed, and the sweeper
    publishes again once the lease passes (SPEC §7).
    """
    try:
        app.send_task(task_name, args=[str(event_id), message_id], task_id=message_id)
    except Exception:
        log.warning(
            "publish_failed", event_id=str(event_id), queue_message_id=message_id, exc_info=True
        )


def publish_batch(message_id: str, event_ids: list[uuid.UUID]) -> None:
    """Send a bulk request's batch: one message, its id the events' `queue_message_id`."""
    try:
        app.send_task(
            BATCH_TASK,
            args=[message_id, [str(e) for e in event_ids]],
            task_id=message_id,
        )
    except Exception:
        log.warning(
            "publish_failed", queue_message_id=message_id, events=len(event_ids), exc_info=True
        )
