"""The FastAPI application factory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_stub import errors
from api_stub.errors import error_response
from api_stub.metrics import (
    HTTP_LATENCY,
    HTTP_REQUESTS,
    RequestLog,
    bind_log_context,
    route_template,
)
from api_stub.ratelimit import rate_limit
from api_stub.routes import admin, auth, customers, events, health
from worker import heap
from worker.db import get_sessionmaker
from worker.settings import Settings, get_settings

STOREFRONT = "/api/storefront/v1"
ADMIN = "/api/admin/v1"


class BodyLimit:
    """413 for a body over the limit, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_big()(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooBig
            return message

        try:
            await self.app(scope, limited, send)
        except _TooBig:
            await self._too_big()(scope, receive, send)

    def _too_big(self) -> ASGIApp:
        # Built when needed: rendering it for every request cost a JSON encoding each.
        message = f"request body is larger than {self.max_bytes} bytes"
        return error_response(413, "payload_too_large", message)


class _TooBig(StarletteHTTPException):
    """An HTTPException, so that FastAPI's body parsing lets it through unchanged."""

    def __init__(self) -> None:
        super().__init__(413, "request body is larger than the limit")


class Metrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            path = route_template(scope)
            HTTP_REQUESTS.labels(scope["method"], path, str(status[0])).inc()
            HTTP_LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The routes are sync and run in anyio's threadpool (40 threads by default). A
    # thread beyond the engine's connections (DB_POOL_SIZE plus as many overflow,
    # worker.db) can only wait for one, while it competes for the GIL with those that
    # have one: measured, that cost CPU per request and lengthened the tail. Requests
    # beyond it wait in the event loop instead, in order.
    settings: Settings = app.state.settings
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 2 * settings.db_pool_size
    yield


def create_app(
    settings: Settings | None = None, session_factory: Callable[[], Session] | None = None
) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Loyalty event reversals",
        version="0.1.0",
        description="Reverses loyalty-program events; see SPEC §4.",
        dependencies=[Depends(bind_log_context)],
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory or get_sessionmaker()
    errors.install(app)
    app.include_router(auth.router, prefix=STOREFRONT, tags=["auth"])
    # The intake is rate-limited per brand; /auth/authorize and health are not.
    limited = [Depends(rate_limit)]
    app.include_router(events.router, prefix=STOREFRONT, tags=["events"], dependencies=limited)
    app.include_router(
        customers.router, prefix=STOREFRONT, tags=["customers"], dependencies=limited
    )
    app.include_router(admin.router, prefix=ADMIN, tags=["admin"])
    app.include_router(health.router, tags=["health"])
    app.include_router(health.router, prefix=STOREFRONT, tags=["health"], include_in_schema=False)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Metrics)
    app.add_middleware(RequestLog)
    return app


def app_factory() -> Any:
    """uvicorn --factory entry point."""
    from worker.logs import configure

    settings = get_settings()
    configure(settings.log_level)
    app = create_app(settings)
    heap.freeze()  # the process's app is built: keep it out of every collection
    return app
