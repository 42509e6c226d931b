"""An app that answers with the pid of the worker process serving it: which of
`reversals api`'s workers holds a connection (tests/unit/test_handoff.py)."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from worker.logs import configure


async def _pid(_request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


def app_factory() -> Starlette:
    # As the service's app does in each worker: uvicorn's lines, "started" among them.
    configure("INFO")
    return Starlette(routes=[Route("/pid", _pid)])
