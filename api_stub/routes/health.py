"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text

from api_stub import responses as docs
from api_stub.deps import transaction
from api_stub.multiprocess import multiprocess_dir
from worker.celery_app import app as celery_app

router = APIRouter()


@router.get("/healthz", response_model=None, responses=docs.HEALTH)
def healthz() -> dict[str, Any]:
    return {"data": {"status": "ok"}}


@router.get("/readyz", responses=docs.READY)
def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with transaction(request) as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"down: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    if ready:
        return JSONResponse({"data": {"status": "ready", "checks": checks}})
    return JSONResponse(
        {"error": {"code": "not_ready", "message": "a dependency is down", "details": checks}},
        status_code=503,
    )


@router.get("/metrics", response_class=PlainTextResponse)
def metrics() -> Response:
    directory = multiprocess_dir()
    if directory is None:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    # Several api processes (`reversals api --workers`): the sum of all of them.
    registry = CollectorRegistry()
    collector: Any = MultiProcessCollector  # untyped in prometheus_client
    collector(registry, path=directory)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
