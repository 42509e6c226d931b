"""Bad input (SPEC §4): a clear 4xx with the error envelope, and nothing changed.

The convention is 422 for every validation failure (see api_stub/errors.py).
Each refusal is checked against a snapshot of the database taken just before:
row counts of the ledger's tables, the target event's row, and the brand's settings.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from tests.support import World
from worker.ledger.invariants import assert_invariants
from worker.models import (
    Allocation,
    ApiKey,
    Brand,
    Customer,
    Event,
    GiftCard,
    IdempotencyKey,
    Line,
    Redemption,
    Transaction,
    Wallet,
)
from worker.settings import get_settings

BASE = "/api/storefront/v1"
ADMIN = "/api/admin/v1"
EVENTS = f"{BASE}/behavior/events"
BULK = f"{BASE}/behavior/events/reverse"
Headers = dict[str, str]
COUNTED = (
    Event,
    Transaction,
    Line,
    Customer,
    IdempotencyKey,
    Wallet,
    GiftCard,
    Redemption,
    Allocation,
)


# ---------------------------------------------------------------- set-up and helpers


@pytest.fixture()
def target(world: World) -> uuid.UUID:
    """A RESOLVED event of world's brand, the one the refused reversals aim at."""
    customer = uuid.uuid4()
    world.event(customer, accumulate=[100])
    event_id = world.event(customer, accumulate=[30], redeem=[40], gift_cards=1)
    assert world.get(event_id).status == "RESOLVED"
    return event_id


def _state(db_factory: Callable[[], Any], event_id: uuid.UUID) -> dict[str, Any]:
    with db_factory() as session:
        counts = {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in COUNTED
        }
        event = session.get_one(Event, event_id)
        row = {column.key: getattr(event, column.key) for column in Event.__table__.columns}
        brands = {b.id: dict(b.settings) for b in session.scalars(select(Brand))}
        balances = sorted(
            (str(w.customer_id), str(w.reward_id), w.balance)
            for w in session.scalars(select(Wallet))
        )
    return {"counts": counts, "event": row, "brands": brands, "balances": balances}


def _refused(
    db_factory: Callable[[], Any],
    event_id: uuid.UUID,
    send: Callable[[], Response],
    status: int,
    code: str | None = None,
) -> dict[str, Any]:
    """Send the request; assert the status, the error envelope, and an unchanged database."""
    before = _state(db_factory, event_id)
    answer = send()
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    after = _state(db_factory, event_id)
    assert after["counts"] == before["counts"]
    assert after["event"] == before["event"]
    assert after["brands"] == before["brands"]
    assert after["balances"] == before["balances"]
    with db_factory() as session:  # SPEC §3, as world.check() runs it
        assert_invariants(session)
    return error


def _event_body(world: World, customer: uuid.UUID | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "customer_id": str(customer or uuid.uuid4()),
        "type": "PURCHASE",
        "accumulate": [
            {"reward_id": str(world.reward_id), "campaign_id": str(world.campaign_id), "amount": 10}
        ],
        **extra,
    }


def _raw(
    client: TestClient, method: str, url: str, content: bytes | Iterator[bytes], headers: Headers
) -> Response:
    answer: Response = client.request(
        method, url, content=content, headers={**headers, "Content-Type": "application/json"}
    )
    return answer


def _customer_exists(db_factory: Callable[[], Any], customer: uuid.UUID) -> bool:
    with db_factory() as session:
        return session.get(Customer, customer) is not None


def _locs(error: dict[str, Any]) -> list[list[Any]]:
    return [item["loc"] for item in error["details"]]


# ---------------------------------------------------------------- malformed JSON


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "events"),
        ("POST", "reverse"),
        ("POST", "bulk"),
        ("PUT", "settings"),
    ],
)
@pytest.mark.parametrize("content", [b'{"reason": "refund",', b"reason=refund", b"{'a': 1}"])
def test_malformed_json_is_422_malformed_json(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    target: uuid.UUID,
    method: str,
    path: str,
    content: bytes,
) -> None:
    url = {
        "events": EVENTS,
        "reverse": f"{EVENTS}/{target}/reverse",
        "bulk": BULK,
        "settings": f"{ADMIN}/settings",
    }[path]
    _refused(
        db_factory,
        target,
        lambda: _raw(client, method, url, content, headers),
        422,
        "malformed_json",
    )


# ---------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("customer_id", 12345),
        ("fulfilled", "maybe"),
        ("data", ["not", "an", "object"]),
        ("accumulate", {"amount": 10}),
        ("reserve", "two days"),
        ("issued_at", "yesterday"),
    ],
)
def test_event_with_wrong_types_is_422(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    target: uuid.UUID,
    field: str,
    value: Any,
) -> None:
    body = {**_event_body(world), field: value}
    error = _refused(
        db_factory,
        target,
        lambda: client.post(EVENTS, json=body, headers=headers),
        422,
        "validation_error",
    )
    assert any(loc[:2] == ["body", field] for loc in _locs(error)), error


def test_accumulation_amount_of_the_wrong_type_is_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    body = _event_body(world)
    body["accumulate"][0]["amount"] = "lots"
    error = _refused(
        db_factory, target, lambda: client.post(EVENTS, json=body, headers=headers), 422
    )
    assert ["body", "accumulate", 0, "amount"] in _locs(error)


@pytest.mark.parametrize(
    "body",
    [
        {"reason": 123},
        {"reason": ["refund"]},
        {"reason": "refund", "dry_run": "perhaps"},
        {"reason": None},
    ],
)
def test_reverse_with_wrong_types_is_422(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    target: uuid.UUID,
    body: dict[str, Any],
) -> None:
    _refused(
        db_factory,
        target,
        lambda: client.post(f"{EVENTS}/{target}/reverse", json=body, headers=headers),
        422,
        "validation_error",
    )


@pytest.mark.parametrize(
    "body",
    [
        {"events": "all of them"},
        {"events": [{"id": "x", "reason": 1}]},
        [{"reason": "refund"}],
    ],
)
def test_bulk_with_wrong_types_is_422(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    target: uuid.UUID,
    body: Any,
) -> None:
    _refused(
        db_factory,
        target,
        lambda: client.post(BULK, json=body, headers=headers),
        422,
        "validation_error",
    )


# ---------------------------------------------------------------- unknown fields


def test_event_with_an_unknown_field_is_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    body = {**_event_body(world), "points": 5}
    error = _refused(
        db_factory,
        target,
        lambda: client.post(EVENTS, json=body, headers=headers),
        422,
        "validation_error",
    )
    assert ["body", "points"] in _locs(error)


def test_event_with_an_unknown_field_in_an_item_is_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    body = _event_body(world)
    body["accumulate"][0]["bonus"] = 1
    error = _refused(
        db_factory, target, lambda: client.post(EVENTS, json=body, headers=headers), 422
    )
    assert ["body", "accumulate", 0, "bonus"] in _locs(error)


def test_reverse_with_an_unknown_field_is_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    error = _refused(
        db_factory,
        target,
        lambda: client.post(
            f"{EVENTS}/{target}/reverse",
            json={"reason": "refund", "force": True},
            headers={**headers, "Idempotency-Key": "unknown-field"},
        ),
        422,
        "validation_error",
    )
    assert ["body", "force"] in _locs(error)


def test_bulk_with_an_unknown_field_is_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    body = {"events": [{"id": str(target), "reason": "refund", "note": "x"}]}
    error = _refused(db_factory, target, lambda: client.post(BULK, json=body, headers=headers), 422)
    assert ["body", "events", 0, "note"] in _locs(error)


def test_admin_put_with_an_unknown_field_is_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    _refused(
        db_factory,
        target,
        lambda: client.put(
            f"{ADMIN}/settings", json={"shortfall": "clamp", "colour": "red"}, headers=headers
        ),
        422,
        "validation_error",
    )


# ---------------------------------------------------------------- non-UUID ids


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "12345", "3c90c3cc-0d44-4b50-8888-8dd25736052"])
def test_non_uuid_event_id_in_the_path_is_422(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    target: uuid.UUID,
    bad_id: str,
) -> None:
    for send in (
        lambda: client.get(f"{EVENTS}/{bad_id}", headers=headers),
        lambda: client.post(f"{EVENTS}/{bad_id}/reverse", json={"reason": "x"}, headers=headers),
        lambda: client.get(f"{BASE}/customers/{bad_id}/wallet", headers=headers),
    ):
        error = _refused(db_factory, target, send, 422, "validation_error")
        assert error["details"][0]["loc"][0] == "path"


def test_non_uuid_ids_in_bodies_are_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    for url, body in (
        (EVENTS, {**_event_body(world), "id": "abc"}),
        (EVENTS, {**_event_body(world), "customer_id": "customer-7"}),
        (BULK, {"events": [{"id": "abc", "reason": "x"}]}),
    ):
        _refused(
            db_factory,
            target,
            partial(client.post, url, json=body, headers=headers),
            422,
            "validation_error",
        )


# ---------------------------------------------------------------- the reason


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({}, "missing"),
        ({"shortfall": "clamp"}, "missing"),
        ({"reason": ""}, "empty"),
        ({"reason": "x" * 501}, "too long"),
    ],
)
def test_reverse_reason_missing_empty_or_too_long_is_422(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    target: uuid.UUID,
    body: dict[str, Any],
    why: str,
) -> None:
    error = _refused(
        db_factory,
        target,
        lambda: client.post(
            f"{EVENTS}/{target}/reverse",
            json=body,
            headers={**headers, "Idempotency-Key": f"reason-{why}"},
        ),
        422,
        "validation_error",
    )
    assert ["body", "reason"] in _locs(error), why


@pytest.mark.parametrize("reason", ["", "x" * 501])
def test_bulk_item_reason_empty_or_too_long_is_422(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    target: uuid.UUID,
    reason: str,
) -> None:
    body = {"events": [{"id": str(target), "reason": reason}]}
    error = _refused(db_factory, target, lambda: client.post(BULK, json=body, headers=headers), 422)
    assert ["body", "events", 0, "reason"] in _locs(error)


def test_a_reason_of_exactly_500_characters_is_accepted(
    client: TestClient, world: World, headers: Headers, target: uuid.UUID
) -> None:
    reason = "r" * 500
    answer = client.post(f"{EVENTS}/{target}/reverse", json={"reason": reason}, headers=headers)
    assert answer.status_code == 202, answer.text
    data = answer.json()["data"]
    assert data["status"] == "PENDING"
    assert data["reversal"]["reason"] == reason
    assert world.get(target).reversal_reason == reason
    assert world.deliver(target) == "REVERSED"
    world.check()


# ---------------------------------------------------------------- size


def _big_event(world: World) -> bytes:
    body = _event_body(world, data={"padding": "x" * (1024 * 1024)})
    raw = json.dumps(body).encode()
    assert len(raw) > 1024 * 1024
    return raw


def test_a_body_over_1_mib_is_413(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    raw = _big_event(world)
    _refused(
        db_factory,
        target,
        lambda: _raw(client, "POST", EVENTS, raw, headers),
        413,
        "payload_too_large",
    )
    reverse = json.dumps({"reason": "x" * (1024 * 1024 + 1)}).encode()
    _refused(
        db_factory,
        target,
        lambda: _raw(client, "POST", f"{EVENTS}/{target}/reverse", reverse, headers),
        413,
        "payload_too_large",
    )


def test_a_streamed_body_over_1_mib_without_content_length_is_413(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    raw = _big_event(world)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 64 * 1024):
            yield raw[start : start + 64 * 1024]

    _refused(
        db_factory,
        target,
        lambda: _raw(client, "POST", EVENTS, chunks(), headers),
        413,
        "payload_too_large",
    )


def test_a_body_of_just_under_1_mib_is_not_refused_for_its_size(
    client: TestClient, world: World, headers: Headers
) -> None:
    body = _event_body(world, data={"padding": ""})
    room = 1024 * 1024 - len(json.dumps(body).encode())
    body["data"]["padding"] = "x" * room
    raw = json.dumps(body).encode()
    assert len(raw) == 1024 * 1024
    answer = _raw(client, "POST", EVENTS, raw, headers)
    assert answer.status_code == 202, answer.text[:300]


# ---------------------------------------------------------------- tokens


def _key_id(db_factory: Callable[[], Any], world: World) -> uuid.UUID:
    with db_factory() as session:
        key: uuid.UUID = session.scalars(
            select(ApiKey.id).where(ApiKey.brand_id == world.brand_id)
        ).one()
        return key


def _crafted(
    db_factory: Callable[[], Any],
    world: World,
    *,
    secret: str | None = None,
    expires_in: timedelta = timedelta(hours=1),
    issuer: str | None = None,
) -> str:
    settings = get_settings()
    now = datetime.now(UTC)
    claims = {
        "iss": issuer or settings.jwt_issuer,
        "sub": str(world.brand_id),
        "kid": str(_key_id(db_factory, world)),
        "iat": now - timedelta(hours=2),
        "nbf": now - timedelta(hours=2),
        "exp": now + expires_in,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, secret or settings.jwt_secret, algorithm="HS256")


def _unsigned(db_factory: Callable[[], Any], world: World) -> str:
    claims = {
        "iss": get_settings().jwt_issuer,
        "sub": str(world.brand_id),
        "kid": str(_key_id(db_factory, world)),
        "iat": int(datetime.now(UTC).timestamp()),
        "exp": int((datetime.now(UTC) + timedelta(hours=1)).timestamp()),
    }
    return jwt.encode(claims, None, algorithm="none")


BAD_AUTH: dict[str, Callable[[Callable[[], Any], World], Headers]] = {
    "no header": lambda f, w: {},
    "empty bearer": lambda f, w: {"Authorization": "Bearer "},
    "garbage token": lambda f, w: {"Authorization": "Bearer not.a.jwt"},
    "random text": lambda f, w: {"Authorization": "Bearer hello"},
    "api key as token": lambda f, w: {"Authorization": f"Bearer {w.api_key}"},
    "basic scheme": lambda f, w: {"Authorization": "Basic dXNlcjpwYXNz"},
    "other secret": lambda f, w: {
        "Authorization": f"Bearer {_crafted(f, w, secret='another-secret-' + 'x' * 32)}"
    },
    "expired": lambda f, w: {
        "Authorization": f"Bearer {_crafted(f, w, expires_in=timedelta(seconds=-10))}"
    },
    "other issuer": lambda f, w: {"Authorization": f"Bearer {_crafted(f, w, issuer='someone')}"},
    "alg none": lambda f, w: {"Authorization": f"Bearer {_unsigned(f, w)}"},
}


def test_a_crafted_token_with_the_right_secret_is_accepted(
    client: TestClient, world: World, db_factory: Any, target: uuid.UUID
) -> None:
    """The control for the token cases below: only what they change makes them fail."""
    token = {"Authorization": f"Bearer {_crafted(db_factory, world)}"}
    answer = client.get(f"{EVENTS}/{target}", headers=token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["id"] == str(target)


@pytest.mark.parametrize("kind", sorted(BAD_AUTH))
def test_missing_or_bad_token_is_401(
    client: TestClient, world: World, db_factory: Any, target: uuid.UUID, kind: str
) -> None:
    auth = BAD_AUTH[kind](db_factory, world)
    customer = uuid.uuid4()
    for send in (
        lambda: client.post(f"{EVENTS}/{target}/reverse", json={"reason": "x"}, headers=auth),
        lambda: client.post(
            EVENTS, json=_event_body(world, customer), headers={**auth, "Idempotency-Key": "k"}
        ),
        lambda: client.post(
            BULK, json={"events": [{"id": str(target), "reason": "x"}]}, headers=auth
        ),
        lambda: client.get(f"{EVENTS}/{target}", headers=auth),
        lambda: client.put(f"{ADMIN}/settings", json={"shortfall": "fail"}, headers=auth),
    ):
        _refused(db_factory, target, send, 401, "unauthorized")
    assert not _customer_exists(db_factory, customer)


def test_a_wrong_api_key_gets_no_token(
    client: TestClient, world: World, db_factory: Any, target: uuid.UUID
) -> None:
    for key_headers in ({}, {"x-api-key": "rk_wrong"}, {"x-api-key": world.api_key[:-1]}):
        _refused(
            db_factory,
            target,
            partial(client.get, f"{BASE}/auth/authorize", headers=key_headers),
            401,
            "unauthorized",
        )


# ---------------------------------------------------------------- another brand's event


def test_another_brands_event_is_404_exactly_like_a_missing_one(
    client: TestClient, world: World, db_factory: Any, target: uuid.UUID
) -> None:
    other = World.create(db_factory)
    answer = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": other.api_key})
    intruder = {"Authorization": f"Bearer {answer.json()['data']['access_token']}"}
    missing = uuid.uuid4()

    def normalised(error: dict[str, Any], event_id: uuid.UUID) -> dict[str, Any]:
        return {**error, "message": error["message"].replace(str(event_id), "<id>")}

    for method, suffix, body in (
        ("GET", "", None),
        ("POST", "/reverse", {"reason": "refund"}),
        ("POST", "/reverse", {"reason": "refund", "dry_run": True}),
    ):

        def send(
            event_id: uuid.UUID,
            method: str = method,
            suffix: str = suffix,
            body: dict[str, Any] | None = body,
        ) -> Response:
            answer: Response = client.request(
                method, f"{EVENTS}/{event_id}{suffix}", json=body, headers=intruder
            )
            return answer

        foreign = _refused(db_factory, target, lambda: send(target), 404, "not_found")
        absent = _refused(db_factory, target, lambda: send(missing), 404, "not_found")
        assert normalised(foreign, target) == normalised(absent, missing)
        assert str(target) not in json.dumps(absent)
    assert world.get(target).status == "RESOLVED"


# ---------------------------------------------------------------- unknown references


@pytest.mark.parametrize(
    "where",
    [
        "accumulate reward",
        "accumulate campaign",
        "redeem reward",
        "redeem campaign",
        "gift card reward",
        "other brand's reward",
        "other brand's campaign",
    ],
)
def test_an_event_naming_an_unknown_reward_or_campaign_is_422_and_creates_no_customer(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    target: uuid.UUID,
    where: str,
) -> None:
    other = World.create(db_factory)
    stranger = uuid.uuid4()
    reward, campaign = str(world.reward_id), str(world.campaign_id)
    unknown_reward = {
        "other brand's reward": str(other.reward_id),
    }.get(where, str(stranger))
    unknown_campaign = {
        "other brand's campaign": str(other.campaign_id),
    }.get(where, str(stranger))
    customer = uuid.uuid4()
    body: dict[str, Any] = {"customer_id": str(customer), "accumulate": [], "redeem": []}
    if where in ("accumulate reward", "other brand's reward"):
        body["accumulate"] = [{"reward_id": unknown_reward, "campaign_id": campaign, "amount": 5}]
    elif where in ("accumulate campaign", "other brand's campaign"):
        body["accumulate"] = [{"reward_id": reward, "campaign_id": unknown_campaign, "amount": 5}]
    elif where == "redeem reward":
        body["redeem"] = [{"reward_id": unknown_reward, "amount": 5}]
    elif where == "redeem campaign":
        body["redeem"] = [{"reward_id": reward, "campaign_id": unknown_campaign, "amount": 5}]
    else:
        body["gift_cards"] = [{"reward_id": unknown_reward, "description": "card"}]
    error = _refused(
        db_factory,
        target,
        lambda: client.post(EVENTS, json=body, headers=headers),
        422,
        "unknown_reference",
    )
    assert not _customer_exists(db_factory, customer)
    assert unknown_reward in error["message"] or unknown_campaign in error["message"]


# ---------------------------------------------------------------- bulk size


def test_bulk_with_1001_items_is_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    items = [{"id": str(target), "reason": "sweep"}] + [
        {"id": str(uuid.uuid4()), "reason": "sweep"} for _ in range(1000)
    ]
    error = _refused(
        db_factory,
        target,
        lambda: client.post(BULK, json={"events": items}, headers=headers),
        422,
        "validation_error",
    )
    assert ["body", "events"] in _locs(error)


def test_bulk_with_no_items_is_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    _refused(
        db_factory,
        target,
        lambda: client.post(BULK, json={"events": []}, headers=headers),
        422,
        "validation_error",
    )


def test_bulk_with_exactly_1000_items_is_accepted(
    client: TestClient, world: World, headers: Headers, target: uuid.UUID
) -> None:
    items = [{"id": str(target), "reason": "sweep"}] + [
        {"id": str(uuid.uuid4()), "reason": "sweep"} for _ in range(999)
    ]
    answer = client.post(BULK, json={"events": items}, headers=headers)
    assert answer.status_code == 202, answer.text[:300]
    results = answer.json()["data"]
    assert len(results) == 1000
    assert results[0]["status"] == "ACCEPTED"
    assert {r["status"] for r in results[1:]} == {"REJECTED"}
    assert world.get(target).status == "PENDING"


# ---------------------------------------------------------------- shortfall policy


def test_an_unknown_shortfall_policy_is_422(
    client: TestClient, world: World, headers: Headers, db_factory: Any, target: uuid.UUID
) -> None:
    for send in (
        lambda: client.post(
            f"{EVENTS}/{target}/reverse",
            json={"reason": "refund", "shortfall": "forgive"},
            headers=headers,
        ),
        lambda: client.post(
            f"{EVENTS}/{target}/reverse",
            json={"reason": "refund", "shortfall": "NEGATIVE", "dry_run": True},
            headers=headers,
        ),
        lambda: client.post(
            BULK,
            json={"events": [{"id": str(target), "reason": "refund"}], "shortfall": "forgive"},
            headers=headers,
        ),
        lambda: client.put(f"{ADMIN}/settings", json={"shortfall": "forgive"}, headers=headers),
    ):
        error = _refused(db_factory, target, send, 422, "validation_error")
        assert any(loc[-1] == "shortfall" for loc in _locs(error)), error


# ---------------------------------------------------------------- amounts


@pytest.mark.parametrize("amount", [0, -1, -100])
@pytest.mark.parametrize("kind", ["accumulate", "redeem"])
def test_a_zero_or_negative_amount_is_422(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    target: uuid.UUID,
    kind: str,
    amount: int,
) -> None:
    customer = uuid.uuid4()
    item: dict[str, Any] = {"reward_id": str(world.reward_id), "amount": amount}
    if kind == "accumulate":
        item["campaign_id"] = str(world.campaign_id)
    body = {"customer_id": str(customer), kind: [item]}
    error = _refused(
        db_factory,
        target,
        lambda: client.post(EVENTS, json=body, headers=headers),
        422,
        "validation_error",
    )
    assert ["body", kind, 0, "amount"] in _locs(error)
    assert not _customer_exists(db_factory, customer)
