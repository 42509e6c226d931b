"""The intake's floor: the api as `reversals api` serves it, with one route added that
does what any intake must do apart from its database work.

The route takes the single reversal's path parameter and body, passes the same
authentication, rate limit, middleware and log line, runs in the same threadpool
(a sync route, as `POST …/{eventId}/reverse` is) and publishes the same message with
`worker.publish.publish`; it reads and writes nothing in PostgreSQL and answers a
small body. What it sustains under the intake's load is what this framework and
Celery's publish leave for the intake on this machine: the intake's ratios to it
show what the reversal's own transaction costs (README, "Where the time goes").

Served only by the bench (`python -m api_stub.serve --factory bench.floor:app_factory`),
never by the service.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from api_stub.app import STOREFRONT
from api_stub.app import app_factory as service_factory
from api_stub.ratelimit import rate_limit
from api_stub.schemas import ReverseIn
from worker.metrics import REVERSE_TASK
from worker.publish import publish

PATH = "/bench/floor/{event_id}"

router = APIRouter()


@router.post(PATH, status_code=202, include_in_schema=False)
def floor(event_id: uuid.UUID, body: ReverseIn) -> JSONResponse:
    # The caller is authenticated by the rate limit's dependency (install), as on the
    # intake's router, where the token is verified once per request.
    message_id = str(uuid.uuid4())
    publish(REVERSE_TASK, event_id, message_id)
    return JSONResponse(
        {"data": {"id": str(event_id), "status": "PENDING", "queue_message_id": message_id}},
        status_code=202,
    )


def install(app: FastAPI) -> FastAPI:
    """Add the floor's route to an app built by api_stub.app.create_app."""
    app.include_router(router, prefix=STOREFRONT, dependencies=[Depends(rate_limit)])
    return app


def app_factory() -> FastAPI:
    """uvicorn --factory entry point: the service's app (logging, frozen heap), plus the route."""
    return install(service_factory())


def path(event_id: uuid.UUID) -> str:
    return STOREFRONT + PATH.format(event_id=event_id)
