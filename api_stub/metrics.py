"""What the intake tells its operators: Prometheus metrics and one log line per request."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from typing import Any

import structlog
from fastapi import Request
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "reversals_http_requests_total",
    "HTTP requests by route and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "reversals_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REVERSALS_ACCEPTED = Counter("reversals_accepted_total", "Reversal requests accepted (202)")

UNMATCHED = "unmatched"
LOG_CONTEXT = "log_context"  # the request's log fields, in scope["state"]
access_log = structlog.get_logger("api_stub.access")


class _RequestIds:
    """Request ids unique across processes: a random prefix per process, then a count.

    A request id must be unique, not unguessable. uuid4() read 16 bytes from the kernel
    for every request: 1.6% of the api's CPU per intake request (py-spy, README "Where
    the time goes"). The prefix is drawn again in a forked child, so that two
    processes never count under the same one.
    """

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.count = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.count):016x}"  # 32 hex digits, as uuid4().hex


request_id = _RequestIds()


def route_template(scope: Scope) -> str:
    """The matched route's full template, e.g. /api/storefront/v1/behavior/events/{event_id}.

    FastAPI includes a router without copying its routes, so `scope["route"].path` is
    relative to the prefix it was included under; that prefix is what of the request
    path comes before the template's own segments (no route here takes a `:path`
    parameter). Every unmatched path shares one label, so a scan of random URLs
    cannot make a label per URL.
    """
    template = getattr(scope.get("route"), "path", None)
    path = str(scope.get("path", ""))
    if not isinstance(template, str):
        # A plain Starlette route (/docs, /openapi.json) names no template; none of
        # them has parameters, so its path is its template.
        matched = "endpoint" in scope and not scope.get("path_params")
        return path if matched else UNMATCHED
    segments = path.rstrip("/").split("/")
    depth = template.rstrip("/").count("/")
    return "/".join(segments[: max(1, len(segments) - depth)]) + template


class RequestLog:
    """One `request` line per request; the request's fields bound on every line it logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context: dict[str, Any] = {"request_id": request_id()}
        # bind_log_context adds to this dict once the route is known.
        scope.setdefault("state", {})[LOG_CONTEXT] = context
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**context)
        status = [500]

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            access_log.info(
                "request",
                method=scope["method"],
                route=route_template(scope),
                status=status[0],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                **context,
            )
            structlog.contextvars.clear_contextvars()


def _brand_of(settings: Any, token: str) -> str | None:
    from api_stub.auth import verify_token

    # A token that does not verify only means no brand_id: the route refuses it, and
    # the log's context must never be what fails a request. Verified tokens are
    # remembered (api_stub.auth.verify_token), so the route's own check is a lookup.
    with contextlib.suppress(Exception):
        return str(verify_token(settings, token).brand_id)
    return None


async def bind_log_context(request: Request) -> None:
    """An app-wide dependency: bind what the request names, for its every log line.

    The brand comes from a token that verifies, never from an unverified claim; the
    routes still authenticate on their own. Headers themselves are never logged.
    """
    fields: dict[str, Any] = {}
    for name in ("event_id", "customer_id"):
        value = request.path_params.get(name)
        if value:
            fields[name] = str(value)[:64]
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        brand_id = _brand_of(request.app.state.settings, authorization[7:].strip())
        if brand_id:
            fields["brand_id"] = brand_id
    if fields:
        structlog.contextvars.bind_contextvars(**fields)
        context = request.scope.get("state", {}).get(LOG_CONTEXT)
        if isinstance(context, dict):
            context.update(fields)
