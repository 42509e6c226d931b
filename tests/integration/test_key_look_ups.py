"""How an api process looks API keys up (api_stub.deps.principal): the requests that
find a key's remembered answer lapsed share one look-up, and a key in use is looked
up again in the background before its answer lapses, so that no request waits."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from api_stub import auth, deps
from api_stub.app import create_app
from api_stub.auth import Principal, key_is_live, verify_token
from tests.support import World
from worker.settings import get_settings

BASE = "/api/storefront/v1"


class CountedLookUps:
    """deps.key_is_live, counted; the look-ups named in `held` wait for `gate`."""

    def __init__(self, held: tuple[int, ...] = ()) -> None:
        self.calls = 0
        self.held, self.gate = held, threading.Event()

    def __call__(self, session: Session, who: Principal) -> bool:
        self.calls += 1
        if self.calls in self.held:
            self.gate.wait(10)
        else:
            time.sleep(0.05)  # slow enough for the other requests to arrive meanwhile
        return key_is_live(session, who)


def _run(
    world: World, db_factory: Callable[[], Any], scenario: Callable[..., Any]
) -> tuple[Any, str]:
    app = create_app(get_settings(), session_factory=db_factory)

    async def main() -> tuple[Any, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            answer = await http.get(f"{BASE}/auth/authorize", headers={"x-api-key": world.api_key})
            token: str = answer.json()["data"]["access_token"]
            http.headers["Authorization"] = f"Bearer {token}"
            return await scenario(http), token

    return asyncio.run(main())


def test_requests_that_find_the_answer_lapsed_share_one_look_up(
    world: World, db_factory: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = CountedLookUps()
    monkeypatch.setattr(deps, "key_is_live", counted)

    async def scenario(http: httpx.AsyncClient) -> list[int]:
        auth.forget_live_keys()
        # Authenticated, then refused for the id: no other database work, which the
        # tests' one shared connection could not do for 20 requests at once.
        answers = await asyncio.gather(
            *(http.get(f"{BASE}/behavior/events/not-an-id") for _ in range(20))
        )
        return [a.status_code for a in answers]

    statuses, _ = _run(world, db_factory, scenario)
    assert statuses == [422] * 20
    assert counted.calls == 1


def test_a_key_in_use_is_looked_up_again_by_one_request_before_its_answer_lapses(
    world: World, db_factory: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "KEY_LIVE_TTL", 1.0)
    counted = CountedLookUps(held=(2,))
    monkeypatch.setattr(deps, "key_is_live", counted)
    path = f"{BASE}/behavior/events/not-an-id"  # authenticated, then refused: 422

    async def scenario(http: httpx.AsyncClient) -> list[int]:
        auth.forget_live_keys()
        first = await http.get(path)  # looks the key up: remembered for 1 s
        await asyncio.sleep(0.6)  # more than half of it spent
        looking = asyncio.ensure_future(http.get(path))  # looks it up again: held
        for _ in range(100):
            if counted.calls == 2:
                break
            await asyncio.sleep(0.02)
        # Meanwhile another request goes on with the answer in hand.
        other = await asyncio.wait_for(http.get(path), timeout=5)
        during = counted.calls
        counted.gate.set()
        return [first.status_code, (await looking).status_code, other.status_code, during]

    (*statuses, during), token = _run(world, db_factory, scenario)
    assert statuses == [422, 422, 422]
    assert during == 2  # the other request neither waited nor looked the key up
    left = auth.key_live_for(verify_token(get_settings(), token))
    assert left is not None and left > 0.7  # renewed: remembered for another second


def test_a_look_up_that_finds_the_key_revoked_drops_its_answer_at_once(
    world: World, db_factory: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "KEY_LIVE_TTL", 1.0)
    path = f"{BASE}/behavior/events/not-an-id"

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        auth.forget_live_keys()
        who = verify_token(get_settings(), http.headers["Authorization"].removeprefix("Bearer "))
        first = await http.get(path)
        await asyncio.sleep(0.6)
        # Revoked behind this process's back: the next look-up finds it so.
        monkeypatch.setattr(deps, "key_is_live", lambda session, who: False)
        looked = await http.get(path)
        # The answer in hand had 0.4 s left: dropped, not kept until it lapses.
        return [first.status_code, looked.status_code, auth.key_live_for(who)]

    answers, _ = _run(world, db_factory, scenario)
    assert answers == [422, 401, None]


def test_a_look_up_that_began_before_a_revocation_here_is_not_remembered() -> None:
    who = Principal(brand_id=uuid.uuid4(), key_id=uuid.uuid4())
    began = auth.live_generation()
    auth.forget_live_keys()  # what revoking a key in this process does
    auth.remember_live(who, began)
    assert auth.key_live_for(who) is None
    auth.remember_live(who, auth.live_generation())
    assert auth.key_live_for(who) is not None
