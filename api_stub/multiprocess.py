"""Prometheus metrics of an api run as several uvicorn worker processes.

Each worker counts its own requests; a scrape of /metrics reaches one of them. As
the Celery worker does (worker.metrics), the api then uses prometheus_client's
multiprocess mode: `reversals api` (api_stub.serve) makes a fresh directory
`<STATE_DIR>/prometheus/api-<host>-<pid>` and sets PROMETHEUS_MULTIPROC_DIR to it
before uvicorn starts (so before any worker imports prometheus_client); every worker
writes its values there, and /metrics sums the files of all of them. Directories of
api processes that are gone are removed at the next start. With one process none of
this happens and /metrics serves the process's own registry, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

from worker.procs import fresh_directory

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set with it by `reversals api`: the directory is the api's own, not a Celery
# worker's that happens to share the environment (tests run both in one process).
API_ENV = "REVERSALS_API_METRICS_DIR"


def prepare_multiprocess(state_dir: Path) -> Path:
    """A fresh directory for this api's workers, named in the environment they inherit."""
    directory = fresh_directory(state_dir, "api")
    os.environ[MULTIPROC_ENV] = os.environ[API_ENV] = str(directory)
    return directory


def multiprocess_dir() -> str | None:
    """The directory this api process counts in, if it is one of several workers."""
    directory = os.environ.get(API_ENV)
    if directory and os.environ.get(MULTIPROC_ENV) == directory:
        return directory
    return None
