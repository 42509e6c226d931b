"""Brand isolation (SPEC §4): a token of brand A reaches nothing of brand B.

For every route of the app there is a case below, where A aims at B's events,
customers, rewards, campaigns and settings: a read of B's object answers 404 with
the same body as an object that does not exist, a write is refused, and B's rows
are unchanged to the last column. `test_every_route_has_an_isolation_case` walks
the app's routes, so a new route without a case here fails the suite.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import FromClause, select

from tests.support import World
from worker.ledger.invariants import assert_invariants
from worker.models import (
    Allocation,
    ApiKey,
    Base,
    Brand,
    Campaign,
    Customer,
    DeadLetter,
    Event,
    GiftCard,
    IdempotencyKey,
    Line,
    Redemption,
    Reward,
    Settlement,
    TierChange,
    Transaction,
    Wallet,
)
from worker.settings import get_settings

BASE = "/api/storefront/v1"
ADMIN = "/api/admin/v1"
EVENTS = f"{BASE}/behavior/events"
Headers = dict[str, str]


@dataclass
class Two:
    """Brand A (the caller) and brand B (the target), each with a ledger history."""

    client: TestClient
    factory: Callable[[], Any]
    a: World
    b: World
    a_auth: Headers
    a_customer: uuid.UUID
    a_event: uuid.UUID
    b_customer: uuid.UUID
    b_event: uuid.UUID  # RESOLVED, with a gift card; reversible by B
    b_spent: uuid.UUID  # RESOLVED, a redemption from b_event's line
    b_reserved: uuid.UUID  # RESOLVED, not fulfilled: fulfil would change it

    def send(self, method: str, url: str, **kwargs: Any) -> Response:
        answer: Response = self.client.request(method, url, headers=self.a_auth, **kwargs)
        return answer


def _authorize(client: TestClient, api_key: str) -> Headers:
    answer = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": api_key})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['data']['access_token']}"}


@pytest.fixture()
def two(client: TestClient, world: World, db_factory: Callable[[], Any]) -> Two:
    b = World.create(
        db_factory,
        {"shortfall": "clamp", "tiers": [{"name": "B-SILVER", "min_points": 0}]},
    )
    b_customer = uuid.uuid4()
    b_event = b.event(b_customer, accumulate=[100], gift_cards=1)
    b_spent = b.event(b_customer, redeem=[30])
    b_reserved = b.event(b_customer, accumulate=[50], fulfilled=False)
    b_auth = _authorize(client, b.api_key)
    # B used an Idempotency-Key: A's use of the same key must not replay B's answer.
    keyed = client.post(
        f"{EVENTS}/{b_spent}/reverse",
        json={"reason": "B's own refund", "dry_run": False},
        headers={**b_auth, "Idempotency-Key": "shared-key"},
    )
    assert keyed.status_code == 202, keyed.text
    assert b.deliver(b_spent) == "REVERSED"
    a_customer = uuid.uuid4()
    a_event = world.event(a_customer, accumulate=[70])
    for event_id in (b_event, b_reserved):
        assert b.get(event_id).status == "RESOLVED"
    return Two(
        client=client,
        factory=db_factory,
        a=world,
        b=b,
        a_auth=_authorize(client, world.api_key),
        a_customer=a_customer,
        a_event=a_event,
        b_customer=b_customer,
        b_event=b_event,
        b_spent=b_spent,
        b_reserved=b_reserved,
    )


# ---------------------------------------------------------------- B's rows, to the column


def _rows(session: Any, table: FromClause, where: Any) -> list[dict[str, Any]]:
    rows = [dict(r._mapping) for r in session.execute(select(table).where(where))]
    return sorted(rows, key=lambda r: json.dumps(r, default=str, sort_keys=True))


def _b_rows(two: Two) -> dict[str, Any]:
    brand = two.b.brand_id
    with two.factory() as session:
        customers = select(Customer.id).where(Customer.brand_id == brand)
        lines = select(Line.id).where(Line.brand_id == brand)
        redemptions = select(Redemption.id).where(Redemption.customer_id.in_(customers))
        events = select(Event.id).where(Event.brand_id == brand)
        snapshot = {
            model.__tablename__: _rows(session, model.__table__, model.brand_id == brand)
            for model in (
                ApiKey,
                Reward,
                Campaign,
                Customer,
                Event,
                Line,
                Transaction,
                Wallet,
                GiftCard,
                TierChange,
                IdempotencyKey,
            )
        }
        snapshot["brands"] = _rows(session, Brand.__table__, Brand.id == brand)
        snapshot["redemptions"] = _rows(
            session, Redemption.__table__, Redemption.customer_id.in_(customers)
        )
        snapshot["allocations"] = _rows(
            session, Allocation.__table__, Allocation.redemption_id.in_(redemptions)
        )
        snapshot["settlements"] = _rows(
            session,
            Settlement.__table__,
            Settlement.debtor_line_id.in_(lines) | Settlement.creditor_line_id.in_(lines),
        )
        snapshot["dead_letters"] = _rows(
            session, DeadLetter.__table__, DeadLetter.event_id.in_(events)
        )
    covered = set(snapshot)
    assert covered == {t.name for t in Base.metadata.sorted_tables}, (
        "a table with brand data is missing from the snapshot: "
        f"{sorted({t.name for t in Base.metadata.sorted_tables} - covered)}"
    )
    return snapshot


# ---------------------------------------------------------------- what "the same as missing" means


def _normalised(body: Any, *ids: object) -> Any:
    text = json.dumps(body, sort_keys=True)
    for value in ids:
        text = text.replace(str(value), "<id>")
    return json.loads(text)


def _like_missing(
    send: Callable[[str], Response], foreign: uuid.UUID, status: int = 404
) -> dict[str, Any]:
    """A's request for B's object answers exactly as one for an object that does not exist."""
    missing = uuid.uuid4()
    theirs, nothing = send(str(foreign)), send(str(missing))
    assert theirs.status_code == nothing.status_code == status, (theirs.text, nothing.text)
    assert _normalised(theirs.json(), foreign) == _normalised(nothing.json(), missing)
    assert str(foreign) not in json.dumps(nothing.json())
    body: dict[str, Any] = theirs.json()
    if status >= 400:
        assert set(body) == {"error"} and body["error"]["code"], body
    return body


def _no_b_ids(two: Two, text: str) -> None:
    for value in (two.b.brand_id, two.b_customer, two.b_event, two.b.reward_id, two.b.campaign_id):
        assert str(value) not in text


# ---------------------------------------------------------------- one case per route


def case_authorize(two: Two) -> None:
    answer = two.client.get(f"{BASE}/auth/authorize", headers={"x-api-key": two.a.api_key})
    assert answer.status_code == 200
    token = answer.json()["data"]["access_token"]
    settings = get_settings()
    claims = jwt.decode(
        token, settings.jwt_secret, algorithms=["HS256"], issuer=settings.jwt_issuer
    )
    assert claims["sub"] == str(two.a.brand_id)
    # B's key with A's token, or a mix of both headers, gives B nothing through A.
    both = two.client.get(
        f"{BASE}/auth/authorize", headers={"x-api-key": two.b.api_key, **two.a_auth}
    )
    assert jwt.decode(both.json()["data"]["access_token"], options={"verify_signature": False})[
        "sub"
    ] == str(two.b.brand_id)


def case_record(two: Two) -> None:
    a_body = {
        "customer_id": str(uuid.uuid4()),
        "accumulate": [
            {"reward_id": str(two.a.reward_id), "campaign_id": str(two.a.campaign_id), "amount": 1}
        ],
    }
    # B's event id as A's client id: refused, and B's event is not returned.
    answer = two.send("POST", EVENTS, json={**a_body, "id": str(two.b_event)})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "conflict"
    _no_b_ids(two, answer.text.replace(str(two.b_event), ""))
    # B's customer as A's customer: refused, nothing created for A.
    answer = two.send("POST", EVENTS, json={**a_body, "customer_id": str(two.b_customer)})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "conflict"
    # B's reward or campaign in A's event: unknown to A, exactly as a made-up id.
    mine_r, mine_c = str(two.a.reward_id), str(two.a.campaign_id)
    items: list[tuple[str, uuid.UUID, Callable[[str], dict[str, Any]]]] = [
        ("accumulate", two.b.reward_id, lambda x: {"reward_id": x, "campaign_id": mine_c}),
        ("accumulate", two.b.campaign_id, lambda x: {"reward_id": mine_r, "campaign_id": x}),
        ("redeem", two.b.reward_id, lambda x: {"reward_id": x}),
        ("redeem", two.b.campaign_id, lambda x: {"reward_id": mine_r, "campaign_id": x}),
    ]
    for kind, foreign, item in items:

        def send(some_id: str, kind: str = kind, item: Any = item) -> Response:
            entry = {**item(some_id), "amount": 1}
            return two.send("POST", EVENTS, json={"customer_id": str(uuid.uuid4()), kind: [entry]})

        error = _like_missing(send, foreign, 422)
        assert error["error"]["code"] == "unknown_reference"
    gift = two.send(
        "POST",
        EVENTS,
        json={
            "customer_id": str(uuid.uuid4()),
            "gift_cards": [{"reward_id": str(two.b.reward_id)}],
        },
    )
    assert gift.status_code == 422 and gift.json()["error"]["code"] == "unknown_reference"


def case_read(two: Two) -> None:
    for event_id in (two.b_event, two.b_spent, two.b_reserved):
        _like_missing(lambda x: two.send("GET", f"{EVENTS}/{x}"), event_id)


def case_fulfill(two: Two) -> None:
    for event_id in (two.b_reserved, two.b_event):
        _like_missing(lambda x: two.send("PATCH", f"{EVENTS}/{x}/fulfill"), event_id)


def case_reverse_bulk(two: Two) -> None:
    for extra in ({}, {"shortfall": "negative"}):
        missing = uuid.uuid4()
        answer = two.send(
            "POST",
            f"{EVENTS}/reverse",
            json={
                "events": [
                    {"id": str(two.b_event), "reason": "fraud"},
                    {"id": str(missing), "reason": "fraud"},
                    {"id": str(two.a_event), "reason": "fraud"},
                ],
                **extra,
            },
        )
        assert answer.status_code == 202, answer.text
        theirs, nothing, mine = answer.json()["data"]
        assert theirs["status"] == nothing["status"] == "REJECTED"
        assert _normalised(theirs, two.b_event) == _normalised(nothing, missing)
        assert theirs["error"]["code"] == "not_found"
        assert mine["status"] in ("ACCEPTED", "ALREADY_REVERSED")  # the control: A's own works


def case_reverse(two: Two) -> None:
    for body, headers in (
        ({"reason": "fraud"}, {}),
        ({"reason": "fraud", "shortfall": "negative"}, {}),
        ({"reason": "fraud", "dry_run": True}, {}),
        ({"reason": "fraud"}, {"Idempotency-Key": "a-key"}),
    ):

        def send(x: str, body: dict[str, Any] = body, headers: Headers = headers) -> Response:
            answer: Response = two.client.post(
                f"{EVENTS}/{x}/reverse", json=body, headers={**two.a_auth, **headers}
            )
            return answer

        for event_id in (two.b_event, two.b_reserved):
            _like_missing(send, event_id)
    # B's Idempotency-Key, used by A on A's event: A's own answer, not B's stored one.
    answer = two.client.post(
        f"{EVENTS}/{two.a_event}/reverse",
        json={"reason": "B's own refund", "dry_run": False},
        headers={**two.a_auth, "Idempotency-Key": "shared-key"},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["data"]["id"] == str(two.a_event)
    _no_b_ids(two, answer.text)


def case_wallet(two: Two) -> None:
    _like_missing(lambda x: two.send("GET", f"{BASE}/customers/{x}/wallet"), two.b_customer)


def case_transactions(two: Two) -> None:
    for query in ("", "?limit=200", "?cursor=1", "?cursor=999999999"):

        def send(x: str, query: str = query) -> Response:
            return two.send("GET", f"{BASE}/customers/{x}/transactions{query}")

        _like_missing(send, two.b_customer)


def case_put_reward(two: Two) -> None:
    answer = two.send(
        "PUT", f"{ADMIN}/rewards/{two.b.reward_id}", json={"type": "POINTS", "name": "mine now"}
    )
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "conflict"
    _no_b_ids(two, answer.text.replace(str(two.b.reward_id), ""))


def case_get_reward(two: Two) -> None:
    _like_missing(lambda x: two.send("GET", f"{ADMIN}/rewards/{x}"), two.b.reward_id)


def case_list_rewards(two: Two) -> None:
    answer = two.send("GET", f"{ADMIN}/rewards")
    assert answer.status_code == 200
    assert [r["id"] for r in answer.json()["data"]] == [str(two.a.reward_id)]


def case_put_campaign(two: Two) -> None:
    answer = two.send("PUT", f"{ADMIN}/campaigns/{two.b.campaign_id}", json={"name": "mine now"})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "conflict"


def case_get_campaign(two: Two) -> None:
    _like_missing(lambda x: two.send("GET", f"{ADMIN}/campaigns/{x}"), two.b.campaign_id)


def case_put_tiers(two: Two) -> None:
    tiers = [{"name": "A-GOLD", "min_points": 10}]
    answer = two.send("PUT", f"{ADMIN}/tiers", json=tiers)
    assert answer.status_code == 200 and answer.json()["data"] == tiers
    with two.factory() as session:
        assert session.get_one(Brand, two.a.brand_id).settings["tiers"] == tiers


def case_get_tiers(two: Two) -> None:
    answer = two.send("GET", f"{ADMIN}/tiers")
    assert answer.status_code == 200 and answer.json()["data"] == []  # A has none; B has one
    assert "B-SILVER" not in answer.text


def case_put_settings(two: Two) -> None:
    answer = two.send("PUT", f"{ADMIN}/settings", json={"shortfall": "fail"})
    assert answer.status_code == 200 and answer.json()["data"]["shortfall"] == "fail"


def case_get_settings(two: Two) -> None:
    answer = two.send("GET", f"{ADMIN}/settings")
    assert answer.status_code == 200
    assert answer.json()["data"]["shortfall"] == "negative"  # A's default, not B's "clamp"


def _brand_free(path: str) -> Callable[[Two], None]:
    """Routes that serve no brand's data: with A's token they still show nothing of B's."""

    def case(two: Two) -> None:
        answer = two.send("GET", path)
        assert answer.status_code in (200, 503), answer.text  # 503: readyz with a dependency down
        _no_b_ids(two, answer.text)

    return case


CASES: dict[tuple[str, str], Callable[[Two], None]] = {
    ("GET", f"{BASE}/auth/authorize"): case_authorize,
    ("POST", EVENTS): case_record,
    ("GET", f"{EVENTS}/{{event_id}}"): case_read,
    ("PATCH", f"{EVENTS}/{{event_id}}/fulfill"): case_fulfill,
    ("POST", f"{EVENTS}/reverse"): case_reverse_bulk,
    ("POST", f"{EVENTS}/{{event_id}}/reverse"): case_reverse,
    ("GET", f"{BASE}/customers/{{customer_id}}/wallet"): case_wallet,
    ("GET", f"{BASE}/customers/{{customer_id}}/transactions"): case_transactions,
    ("PUT", f"{ADMIN}/rewards/{{reward_id}}"): case_put_reward,
    ("GET", f"{ADMIN}/rewards/{{reward_id}}"): case_get_reward,
    ("GET", f"{ADMIN}/rewards"): case_list_rewards,
    ("PUT", f"{ADMIN}/campaigns/{{campaign_id}}"): case_put_campaign,
    ("GET", f"{ADMIN}/campaigns/{{campaign_id}}"): case_get_campaign,
    ("PUT", f"{ADMIN}/tiers"): case_put_tiers,
    ("GET", f"{ADMIN}/tiers"): case_get_tiers,
    ("PUT", f"{ADMIN}/settings"): case_put_settings,
    ("GET", f"{ADMIN}/settings"): case_get_settings,
    **{
        ("GET", path): _brand_free(path)
        for path in (
            "/healthz",
            "/readyz",
            "/metrics",
            f"{BASE}/healthz",
            f"{BASE}/readyz",
            f"{BASE}/metrics",
            "/openapi.json",
            "/docs",
            "/docs/oauth2-redirect",
            "/redoc",
        )
    },
}


def _app_routes(client: TestClient) -> set[tuple[str, str]]:
    routes = set()
    for route in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]  # TestClient.app is typed as a plain ASGI callable
        for method in (getattr(route, "methods", None) or set()) - {"HEAD"}:
            routes.add((method, str(route.path)))
    return routes


def test_every_route_has_an_isolation_case(client: TestClient) -> None:
    routes = _app_routes(client)
    assert len(routes) >= 27
    assert routes - set(CASES) == set(), "routes without an isolation case"
    assert set(CASES) - routes == set(), "cases for routes the app no longer has"


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda r: f"{r[0]} {r[1]}")
def test_brand_a_reaches_nothing_of_brand_b(two: Two, route: tuple[str, str]) -> None:
    before = _b_rows(two)
    CASES[route](two)
    assert _b_rows(two) == before, f"{route}: brand B's rows changed"
    # B still works as before, with B's own token: the control for every 404 above.
    b_auth = _authorize(two.client, two.b.api_key)
    answer = two.client.get(f"{EVENTS}/{two.b_event}", headers=b_auth)
    assert answer.status_code == 200 and answer.json()["data"]["status"] == "RESOLVED"
    wallet = two.client.get(f"{BASE}/customers/{two.b_customer}/wallet", headers=b_auth)
    assert wallet.status_code == 200
    assert two.b.balance(two.b_customer) == 100
    with two.factory() as session:
        assert_invariants(session)
