"""Per-request plumbing: the transaction the route owns, and the caller's brand."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_stub.auth import (
    AuthError,
    Principal,
    key_is_live,
    key_is_live_cached,
    remember_live,
    verify_token,
)
from api_stub.errors import ApiError
from worker.db import unit_of_work
from worker.settings import Settings


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


def _check_live(request: Request, who: Principal) -> None:
    with transaction(request) as session:
        if not key_is_live(session, who):
            raise _unauthorized("the API key behind this token was revoked")
    remember_live(who)


async def principal(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The verified token's brand and key, the key found live (api_stub.auth caches both).

    Async so that a request whose token and key are known costs no trip to the
    threadpool here; only a lookup of the key's row goes there.
    """
    if not authorization or not authorization.startswith("Bearer "):
        raise _unauthorized("missing bearer token")
    try:
        who = verify_token(settings_of(request), authorization.removeprefix("Bearer ").strip())
    except AuthError as exc:
        raise _unauthorized(str(exc)) from exc
    if not key_is_live_cached(who):
        await run_in_threadpool(_check_live, request, who)
    return who


CurrentBrand = Annotated[Principal, Depends(principal)]
