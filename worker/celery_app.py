"""The Celery application, configured from SPEC §7.

Late acks and reject-on-worker-lost so a message is acknowledged only after its
transaction committed; prefetch 1 so a busy worker does not hoard messages; the
visibility timeout set everywhere Celery reads it, with every time limit and
retry delay below it (checked in Settings and by a test).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker import heap, logs, metrics  # noqa: F401 - connect their Celery signal handlers
from worker.settings import Settings, get_settings


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {"visibility_timeout": settings.broker_visibility_timeout}
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_default_queue": settings.queue,
        "worker_consumer": "worker.poison:Consumer",
        # A publish that cannot reach the broker gives up fast: the row is
        # committed, the request answered, and the sweeper publishes later.
        "broker_connection_timeout": 2,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "sweep-stuck-requests": {
                "task": "reversals.sweep",
                "schedule": settings.sweep_interval,
            },
            "expire-lines": {
                "task": "reversals.expire_lines",
                "schedule": settings.expiry_interval,
            },
            "expire-reservations": {
                "task": "reversals.expire_reservations",
                "schedule": settings.expiry_interval,
            },
        },
        "timezone": "UTC",
        "enable_utc": True,
    }


def create_app(settings: Settings | None = None) -> Celery:
    app = Celery("reversals", include=["worker.tasks"])
    app.conf.update(celery_config(settings or get_settings()))
    return app


app = create_app()
