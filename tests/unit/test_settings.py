"""Settings and the Celery configuration derived from them (SPEC §7)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.celery_app import app, celery_config
from worker.settings import DEV_JWT_SECRET, Settings, get_settings, to_sqlalchemy_url


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(environment="production", jwt_secret=DEV_JWT_SECRET)
    assert Settings(environment="production", jwt_secret="s" * 40).environment == "production"


def test_usual_postgres_urls_get_the_psycopg_driver() -> None:
    assert to_sqlalchemy_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert to_sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert to_sqlalchemy_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize("visibility", [5, 30, 300, 3600])
def test_every_limit_and_delay_stays_below_the_visibility_timeout(visibility: int) -> None:
    settings = Settings(broker_visibility_timeout=visibility)
    assert settings.task_soft_time_limit < settings.task_time_limit < visibility
    assert settings.max_retry_delay < visibility


def test_timings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_VISIBILITY_TIMEOUT", "77")
    monkeypatch.setenv("SWEEP_INTERVAL", "3")
    monkeypatch.setenv("PENDING_LEASE", "9")
    monkeypatch.setenv("TASK_MAX_RETRIES", "2")
    settings = Settings()
    assert (settings.broker_visibility_timeout, settings.sweep_interval) == (77, 3)
    assert (settings.pending_lease, settings.task_max_retries) == (9, 2)


def test_the_live_celery_configuration_keeps_the_delivery_guarantees() -> None:
    conf = app.conf
    settings = get_settings()
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility == settings.broker_visibility_timeout
    assert conf.task_time_limit < visibility and conf.task_soft_time_limit < conf.task_time_limit
    assert settings.max_retry_delay < visibility
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    derived = celery_config(Settings(broker_visibility_timeout=40))
    assert derived["broker_transport_options"]["visibility_timeout"] == 40
    assert derived["task_time_limit"] < 40
