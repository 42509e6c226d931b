"""Per-request plumbing: the transaction the route owns, and the caller's brand."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import structlog
from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_stub import auth
from api_stub.auth import (
    AuthError,
    Principal,
    forget_live_key,
    key_is_live,
    key_live_for,
    live_generation,
    remember_live,
    verify_token,
)
from api_stub.errors import ApiError
from worker.db import unit_of_work
from worker.settings import Settings

log = structlog.get_logger(__name__)


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@contextmanager
def transaction(request: Request) -> Iterator[Session]:
    """The request's one transaction: committed before the response is built."""
    factory: Callable[[], Session] = request.app.state.session_factory
    with unit_of_work(factory) as session:
        yield session


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def _look_up(request: Request, who: Principal) -> bool:
    """Read the key's row: is it live? A live answer is remembered (KEY_LIVE_TTL)."""
    generation = live_generation()
    with transaction(request) as session:
        live = key_is_live(session, who)
    if live:
        remember_live(who, generation)
    else:
        forget_live_key(who)  # revoked: the answer in hand no longer holds here
    return live


# The look-up of a key in flight, per event loop and key: every request that needs it
# meanwhile awaits the same one. When the remembered answer lapsed, all the requests
# arriving at that moment (dozens, under load) each ran its own transaction in the
# threadpool, competing with the routes' work, and answered late together: the
# intake's slowest requests came every 2 s, the cache's lifetime.
_looking_up: dict[tuple[asyncio.AbstractEventLoop, uuid.UUID, uuid.UUID], asyncio.Task[bool]] = {}


async def _look_up_once(request: Request, who: Principal) -> bool:
    loop = asyncio.get_running_loop()
    key = (loop, who.key_id, who.brand_id)
    task = _looking_up.get(key)
    if task is None:
        task = loop.create_task(run_in_threadpool(_look_up, request, who))
        _looking_up[key] = task
        task.add_done_callback(lambda _: _looking_up.pop(key, None))
    # Shielded: a request that goes away does not cancel the others' look-up.
    return await asyncio.shield(task)


async def principal(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The verified token's brand and key, the key found live (api_stub.auth caches both).

    Async so that a request whose token and key are known costs no trip to the
    threadpool here. Once a key's remembered answer is half spent, the next request
    looks the key up again while the others go on with the answer in hand, so that
    under steady traffic one request in a second waits for a look-up, not all of
    those arriving when the answer lapses; those that find it lapsed (an idle key, a
    new process) share one look-up.
    """
    if not authorization or not authorization.startswith("Bearer "):
        raise _unauthorized("missing bearer token")
    try:
        who = verify_token(settings_of(request), authorization.removeprefix("Bearer ").strip())
    except AuthError as exc:
        raise _unauthorized(str(exc)) from exc
    left = key_live_for(who)
    if left is None:
        live = await _look_up_once(request, who)
    elif left < auth.KEY_LIVE_TTL / 2 and not _looking_up_now(who):
        try:
            live = await _look_up_once(request, who)
        except Exception as exc:
            # The answer in hand still holds; the request that finds it lapsed looks
            # the key up itself, and answers this error if it persists.
            log.warning("key_look_up_failed", error=repr(exc))
            live = True
    else:
        live = True
    if not live:
        raise _unauthorized("the API key behind this token was revoked")
    return who


def _looking_up_now(who: Principal) -> bool:
    return (asyncio.get_running_loop(), who.key_id, who.brand_id) in _looking_up


CurrentBrand = Annotated[Principal, Depends(principal)]
