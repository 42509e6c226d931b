"""The per-brand rate limit on the intake: 429 with Retry-After and the error
envelope, another brand unaffected, nothing written for a refused request."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api_stub.app import create_app
from api_stub.ratelimit import PRUNE_AT, RateLimiter, TokenBucket
from tests.support import World
from worker.models import Customer, Event, IdempotencyKey, Transaction
from worker.settings import Settings, get_settings

BASE = "/api/storefront/v1"
ADMIN = "/api/admin/v1"
EVENTS = f"{BASE}/behavior/events"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the bucket alone


def test_the_defaults_are_200_per_second_and_a_burst_of_400() -> None:
    assert Settings.model_fields["rate_limit_per_second"].default == 200
    assert Settings.model_fields["rate_limit_burst"].default == 400


def test_a_bucket_grants_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, now=clock())
    assert [bucket.take(clock()) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(clock()) == pytest.approx(0.5)
    clock.now += 0.25
    assert bucket.take(clock()) == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take(clock()) == 0.0
    clock.now += 3600  # a long idle time refills to the burst, never beyond
    assert [bucket.take(clock()) for _ in range(4)][-1] == pytest.approx(0.5)


def test_a_clock_going_backwards_grants_nothing_extra() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=1, now=clock())
    assert bucket.take(clock()) == 0.0
    clock.now -= 100
    assert bucket.take(clock()) > 0


def test_brands_have_separate_buckets_and_full_ones_are_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert [limiter.check(a) for _ in range(3)][-1] > 0
    assert limiter.check(b) == 0.0
    for _ in range(PRUNE_AT):
        limiter.check(uuid.uuid4())
    clock.now += 10  # every bucket refills
    limiter.check(uuid.uuid4())
    assert len(limiter._buckets) == 1  # only the newest brand remains


# ---------------------------------------------------------------- over HTTP


@pytest.fixture()
def tight(db_factory: Callable[[], Any]) -> Iterator[tuple[TestClient, Clock]]:
    """An app whose brands get a burst of 3 and then one request every 10 s (a frozen clock)."""
    settings = get_settings().model_copy(
        update={"rate_limit_per_second": 0.1, "rate_limit_burst": 3}
    )
    app = create_app(settings, session_factory=db_factory)
    clock = Clock()
    app.state.rate_limiter = RateLimiter(
        settings.rate_limit_per_second, settings.rate_limit_burst, clock=clock
    )
    with TestClient(app) as client:
        yield client, clock


def _token(client: TestClient, world: World) -> dict[str, str]:
    answer = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": world.api_key})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['data']['access_token']}"}


def _counts(db_factory: Callable[[], Any]) -> dict[str, int]:
    with db_factory() as session:
        return {
            m.__tablename__: int(session.scalar(select(func.count()).select_from(m)) or 0)
            for m in (Event, Customer, Transaction, IdempotencyKey)
        }


def _event(world: World, customer: uuid.UUID) -> dict[str, Any]:
    return {
        "customer_id": str(customer),
        "accumulate": [
            {"reward_id": str(world.reward_id), "campaign_id": str(world.campaign_id), "amount": 5}
        ],
    }


def test_a_burst_over_the_limit_gets_429_with_retry_after_and_writes_nothing(
    tight: tuple[TestClient, Clock], world: World, db_factory: Callable[[], Any]
) -> None:
    client, clock = tight
    customer = uuid.uuid4()
    target = world.event(customer, accumulate=[100])
    auth = _token(client, world)
    for _ in range(3):
        assert client.get(f"{EVENTS}/{target}", headers=auth).status_code == 200

    before, row_before = _counts(db_factory), world.get(target).queue_message_id
    stranger = uuid.uuid4()
    refused = [
        client.post(EVENTS, json=_event(world, stranger), headers=auth),
        client.post(
            f"{EVENTS}/{target}/reverse",
            json={"reason": "refund"},
            headers={**auth, "Idempotency-Key": "limited"},
        ),
        client.post(
            f"{EVENTS}/reverse", json={"events": [{"id": str(target), "reason": "x"}]}, headers=auth
        ),
        client.patch(f"{EVENTS}/{target}/fulfill", headers=auth),
        client.get(f"{EVENTS}/{target}", headers=auth),
        client.get(f"{BASE}/customers/{customer}/wallet", headers=auth),
        client.get(f"{BASE}/customers/{customer}/transactions", headers=auth),
    ]
    for answer in refused:
        assert answer.status_code == 429, answer.text
        assert answer.headers["Retry-After"] == "10"
        assert answer.json() == {
            "error": {
                "code": "rate_limited",
                "message": "too many requests for this brand; retry in 10 s",
                "details": {"retry_after": 10},
            }
        }
    assert _counts(db_factory) == before
    assert world.get(target).status == "RESOLVED"
    assert world.get(target).queue_message_id == row_before
    with db_factory() as session:
        assert session.get(Customer, stranger) is None

    # Token, health and brand set-up are not the intake: still served.
    assert client.get(f"{BASE}/auth/authorize", headers={"x-api-key": world.api_key}).is_success
    assert client.get(f"{BASE}/healthz").status_code == 200
    assert client.get(f"{ADMIN}/settings", headers=auth).status_code == 200

    # Half the refill time later: still refused, and told the rest of the wait.
    clock.now += 5
    answer = client.get(f"{EVENTS}/{target}", headers=auth)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "5"
    clock.now += 5
    assert client.post(EVENTS, json=_event(world, stranger), headers=auth).status_code == 202
    assert client.get(f"{EVENTS}/{target}", headers=auth).status_code == 429
    world.check()


def test_another_brand_is_unaffected(
    tight: tuple[TestClient, Clock], world: World, db_factory: Callable[[], Any]
) -> None:
    client, _ = tight
    other = World.create(db_factory)
    mine, theirs = _token(client, world), _token(client, other)
    customer = uuid.uuid4()
    statuses = [
        client.get(f"{BASE}/customers/{customer}/wallet", headers=mine).status_code
        for _ in range(5)
    ]
    assert statuses == [404, 404, 404, 429, 429]
    created = client.post(EVENTS, json=_event(other, uuid.uuid4()), headers=theirs)
    assert created.status_code == 202, created.text
    assert client.get(f"{EVENTS}/{created.json()['data']['id']}", headers=theirs).status_code == 200


def test_a_token_that_is_refused_spends_nothing(
    tight: tuple[TestClient, Clock], world: World
) -> None:
    """Only authenticated requests count: garbage tokens cannot exhaust a brand's allowance."""
    client, _ = tight
    for _ in range(10):
        answer = client.get(
            f"{BASE}/customers/{uuid.uuid4()}/wallet", headers={"Authorization": "Bearer x"}
        )
        assert answer.status_code == 401
    auth = _token(client, world)
    assert client.get(f"{BASE}/customers/{uuid.uuid4()}/wallet", headers=auth).status_code == 404


def test_the_app_builds_its_limiter_from_settings(
    client: TestClient, headers: dict[str, str]
) -> None:
    """Without a limiter given, the first intake request makes one from the app's settings."""
    assert getattr(client.app.state, "rate_limiter", None) is None  # type: ignore[attr-defined]  # Starlette's app attribute is typed as the ASGI callable
    assert client.get(f"{BASE}/customers/{uuid.uuid4()}/wallet", headers=headers).status_code == 404
    limiter = client.app.state.rate_limiter  # type: ignore[attr-defined]  # as above
    settings = get_settings()
    assert (limiter.rate, limiter.burst) == (
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
    )
    assert limiter.check(uuid.uuid4()) == 0.0
