"""Configuration, read from the environment (SPEC §8).

Every timing of SPEC §7 is a setting so that tests and operators can shorten it.
With neither DATABASE_URL nor BROKER_URL set, the embedded engines serve
(see worker.embedded), which is why both may be empty here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-secret-change-me-0123456789abcdef"  # noqa: S105 - refused outside development


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = ""
    broker_url: str = ""
    state_dir: Path = Path(".reversals")

    jwt_secret: str = DEV_JWT_SECRET
    jwt_issuer: str = "reversals"
    jwt_ttl_seconds: int = Field(default=3600, ge=60, le=86400)

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    flower_basic_auth: str = "admin:admin"

    queue: str = "reversals"
    # Events of one bulk request per message (one claim, then one transaction for all).
    bulk_batch_size: int = Field(default=50, ge=1, le=1000)
    # Other waiting reversals a single reversal's delivery takes along (0: none), done
    # in the same transaction; their own messages then find them done (processing.py).
    take_waiting: int = Field(default=49, ge=0, le=999)
    broker_visibility_timeout: int = Field(default=300, ge=5)
    sweep_interval: float = Field(default=30, gt=0)
    expiry_interval: float = Field(default=60, gt=0)
    pending_lease: float = Field(default=120, gt=0)
    task_max_retries: int = Field(default=8, ge=0)
    task_retry_base_delay: float = Field(default=1.0, gt=0)
    db_pool_size: int = Field(default=5, ge=1)
    max_body_bytes: int = 1024 * 1024
    # Per brand, per api process (api_stub.ratelimit): a token bucket refilled at
    # RATE_LIMIT_PER_SECOND, holding at most RATE_LIMIT_BURST requests.
    rate_limit_per_second: float = Field(default=200, gt=0)
    rate_limit_burst: int = Field(default=400, ge=1)
    log_level: str = "INFO"
    # Each worker serves its Prometheus metrics here (0: not at all); see worker.metrics.
    worker_metrics_port: int = Field(default=9808, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # Seconds between full counts of events by status (a scan of the events table);
    # in-flight counts, the oldest request and dead letters are exact on every scrape.
    worker_metrics_count_interval: float = Field(default=60, ge=0)

    @model_validator(mode="after")
    def _timings_fit_visibility_timeout(self) -> Settings:
        # A task that outlives the visibility timeout is redelivered while it
        # still runs; every limit must stay below it (SPEC §7).
        if self.task_time_limit >= self.broker_visibility_timeout:
            raise ValueError("BROKER_VISIBILITY_TIMEOUT is too short for the task time limit")
        if self.environment == "production" and self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError("JWT_SECRET must be set outside development")
        return self

    @property
    def task_time_limit(self) -> int:
        return max(2, int(self.broker_visibility_timeout * 0.5))

    @property
    def task_soft_time_limit(self) -> int:
        return max(1, self.task_time_limit - 1)

    @property
    def max_retry_delay(self) -> int:
        return max(1, int(self.broker_visibility_timeout * 0.25))

    @property
    def sqlalchemy_url(self) -> str:
        return to_sqlalchemy_url(self.database_url)


def to_sqlalchemy_url(url: str) -> str:
    """Accept the usual postgresql:// form and pin the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
