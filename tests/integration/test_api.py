"""The HTTP API as a client uses it (SPEC §4, §5), through FastAPI's TestClient on the
real PostgreSQL. The worker's part is played by `world.deliver`, which hands the
event's current message to the same handler Celery runs. SPEC §3 is checked after
every scenario."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from tests.support import World
from worker.models import Transaction
from worker.processing import deliver, handle_batch
from worker.settings import get_settings

BASE = "/api/storefront/v1"
ADMIN = "/api/admin/v1"
Headers = dict[str, str]

# Every key of the seed document's event object, of its `result`, and of a transaction.
SEED_EVENT_KEYS = {
    "id",
    "customer_id",
    "type",
    "data",
    "fulfilled",
    "reserve",
    "queue_message_id",
    "rewarding_campaigns",
    "status",
    "result",
    "issued_at",
    "processing_at",
    "resolved_at",
    "cancelled_at",
    "expired_at",
    "reversed_at",
}
SEED_RESULT_KEYS = {
    "wallet",
    "customer",
    "gift_card",
    "accumulations",
    "redemptions",
    "transactions",
    "customer_by_tier",
}
SEED_TRANSACTION_KEYS = {
    "id",
    "brand_id",
    "event_id",
    "campaign_id",
    "channel_id",
    "store_id",
    "funded_by",
    "event_type",
    "reward_type",
    "reward_id",
    "amount",
    "cost",
    "details",
    "type",
    "receiver_id",
    "sender_id",
    "created_at",
    "issued_at",
    "attributes",
    "metadata",
}
SEED_LINE_KEYS = {
    "amount",
    "reward_id",
    "campaign_id",
    "brand_id",
    "issued_at",
    "expiration_date",
    "reservation_expires_at",
}
SEED_GIFT_CARD_KEYS = {
    "code",
    "reward_id",
    "customer_id",
    "rewarded_at",
    "description",
    "expired_at",
    "redeemed_at",
}
LATER = "2031-01-01T00:00:00Z"


# ---------------------------------------------------------------- helpers


def _data(answer: Response, status: int) -> Any:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"data"} or (set(body) == {"data", "next_cursor"}), body
    return body["data"]


def _event_body(
    world: World,
    customer: uuid.UUID,
    accumulate: list[int] = (),  # type: ignore[assignment]
    redeem: list[int] = (),  # type: ignore[assignment]
    gift_cards: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "customer_id": str(customer),
        "type": "PURCHASE",
        "data": {"order": "A-1"},
        "accumulate": [
            {
                "reward_id": str(world.reward_id),
                "campaign_id": str(world.campaign_id),
                "amount": amount,
                "expiration_date": LATER,
            }
            for amount in accumulate
        ],
        "redeem": [{"reward_id": str(world.reward_id), "amount": amount} for amount in redeem],
        "gift_cards": [
            {"reward_id": str(world.reward_id), "description": "refund card"}
            for _ in range(gift_cards)
        ],
        **extra,
    }


def _submit(client: TestClient, headers: Headers, body: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = _data(
        client.post(f"{BASE}/behavior/events", json=body, headers=headers), 202
    )
    assert event["status"] == "PENDING"
    assert event["queue_message_id"]
    return event


def _resolved(
    client: TestClient, headers: Headers, world: World, customer: uuid.UUID, **kwargs: Any
) -> uuid.UUID:
    """Record an event over HTTP and let the worker process it; it must end RESOLVED."""
    event = _submit(client, headers, _event_body(world, customer, **kwargs))
    world.deliver(uuid.UUID(event["id"]))
    assert _get(client, headers, event["id"])["status"] == "RESOLVED"
    return uuid.UUID(event["id"])


def _get(client: TestClient, headers: Headers, event_id: uuid.UUID | str) -> dict[str, Any]:
    event: dict[str, Any] = _data(
        client.get(f"{BASE}/behavior/events/{event_id}", headers=headers), 200
    )
    return event


def _reverse(
    client: TestClient,
    headers: Headers,
    event_id: uuid.UUID | str,
    body: dict[str, Any] | None = None,
    extra_headers: Headers | None = None,
) -> Response:
    answer: Response = client.post(
        f"{BASE}/behavior/events/{event_id}/reverse",
        json=body if body is not None else {"reason": "order refunded"},
        headers={**headers, **(extra_headers or {})},
    )
    return answer


def _wallet(client: TestClient, headers: Headers, customer: uuid.UUID) -> dict[str, Any]:
    wallet: dict[str, Any] = _data(
        client.get(f"{BASE}/customers/{customer}/wallet", headers=headers), 200
    )
    return wallet


def _balance(client: TestClient, headers: Headers, world: World, customer: uuid.UUID) -> int:
    balances = _wallet(client, headers, customer)["balances"]
    mine = [b["balance"] for b in balances if b["reward_id"] == str(world.reward_id)]
    assert len(mine) <= 1
    return int(mine[0]) if mine else 0


def _transactions(
    client: TestClient, headers: Headers, customer: uuid.UUID, limit: int = 200
) -> list[dict[str, Any]]:
    """Every transaction of the customer, following next_cursor to the end."""
    seen: list[dict[str, Any]] = []
    cursor: int | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        answer = client.get(
            f"{BASE}/customers/{customer}/transactions", params=params, headers=headers
        )
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page["data"]) <= limit
        seen.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("transaction paging never ended")


def _token_for(client: TestClient, world: World) -> Headers:
    answer = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": world.api_key})
    token = _data(answer, 200)["access_token"]
    return {"Authorization": f"Bearer {token}"}


def _assert_timestamps_are_utc_z(value: Any, path: str = "") -> int:
    """Every `*_at` / `*_date` string in the document is ISO 8601 ending in Z. Returns the count."""
    found = 0
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            if isinstance(item, str) and (key.endswith("_at") or key.endswith("_date")):
                assert item.endswith("Z"), f"{here} = {item!r} does not end in Z"
                parsed = datetime.fromisoformat(item.replace("Z", "+00:00"))
                assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
                found += 1
            else:
                found += _assert_timestamps_are_utc_z(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _assert_timestamps_are_utc_z(item, f"{path}[{index}]")
    return found


def _assert_seed_shape(event: dict[str, Any]) -> None:
    assert set(event) >= SEED_EVENT_KEYS, SEED_EVENT_KEYS - set(event)
    assert set(event["result"]) >= SEED_RESULT_KEYS, SEED_RESULT_KEYS - set(event["result"])
    assert event["status"] in {
        "PENDING",
        "PROCESSING",
        "FAILED",
        "RESOLVED",
        "CANCELLED",
        "EXPIRED",
        "REVERSED",
    }
    for tx in event["result"]["transactions"]:
        assert set(tx) >= SEED_TRANSACTION_KEYS, SEED_TRANSACTION_KEYS - set(tx)
        assert {"line", "campaign_name"} <= set(tx["attributes"])
        assert tx["type"] in {
            "ACCUMULATION",
            "REDEMPTION",
            "EXPIRATION",
            "MIGRATION",
            "TRANSFER",
            "REVERSAL",
        }
        assert tx["reward_type"] in {"POINTS", "DISCOUNT", "GIFT_CARD", "PRODUCT"}
        if tx["attributes"]["line"] is not None:
            assert set(tx["attributes"]["line"]) >= SEED_LINE_KEYS
    for line in event["result"]["accumulations"] + event["result"]["redemptions"]:
        assert set(line) >= SEED_LINE_KEYS, SEED_LINE_KEYS - set(line)
    for card in event["result"]["gift_card"]:
        assert set(card) >= SEED_GIFT_CARD_KEYS, SEED_GIFT_CARD_KEYS - set(card)
    _assert_timestamps_are_utc_z(event)


# ---------------------------------------------------------------- auth


def test_authorize_exchanges_the_api_key_for_a_bearer_jwt_naming_the_brand(
    client: TestClient, world: World
) -> None:
    answer = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": world.api_key})
    data = _data(answer, 200)
    assert set(data) == {"access_token", "token_type", "expires_in"}
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == 3600
    settings = get_settings()
    claims = jwt.decode(
        data["access_token"],
        settings.jwt_secret,
        algorithms=["HS256"],
        issuer=settings.jwt_issuer,
    )
    assert claims["sub"] == str(world.brand_id)
    assert claims["exp"] - claims["iat"] == 3600

    # The token works on a protected route; a wrong key gets none.
    token = {"Authorization": f"Bearer {data['access_token']}"}
    assert client.get(f"{ADMIN}/settings", headers=token).status_code == 200
    refused = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": world.api_key + "x"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert "data" not in refused.json()


# ---------------------------------------------------------------- admin


def test_admin_set_up_is_idempotent_puts_each_with_its_get(
    client: TestClient, world: World, headers: Headers, db_factory: Any
) -> None:
    reward_id, campaign_id = uuid.uuid4(), uuid.uuid4()
    reward = {"type": "DISCOUNT", "name": "Ten off", "cost": 2.5}
    first = _data(client.put(f"{ADMIN}/rewards/{reward_id}", json=reward, headers=headers), 200)
    again = _data(client.put(f"{ADMIN}/rewards/{reward_id}", json=reward, headers=headers), 200)
    assert first == again == {"id": str(reward_id), **reward}
    assert _data(client.get(f"{ADMIN}/rewards/{reward_id}", headers=headers), 200) == first
    renamed = _data(
        client.put(
            f"{ADMIN}/rewards/{reward_id}", json={**reward, "name": "Twelve off"}, headers=headers
        ),
        200,
    )
    assert renamed["name"] == "Twelve off"
    assert (
        _data(client.get(f"{ADMIN}/rewards/{reward_id}", headers=headers), 200)["name"]
        == "Twelve off"
    )
    listed = _data(client.get(f"{ADMIN}/rewards", headers=headers), 200)
    assert {r["id"] for r in listed} == {str(reward_id), str(world.reward_id)}

    campaign = {"name": "Summer", "funded_by": "PARTNER"}
    made = _data(
        client.put(f"{ADMIN}/campaigns/{campaign_id}", json=campaign, headers=headers), 200
    )
    assert made == {"id": str(campaign_id), **campaign}
    assert (
        _data(client.put(f"{ADMIN}/campaigns/{campaign_id}", json=campaign, headers=headers), 200)
        == made
    )
    assert _data(client.get(f"{ADMIN}/campaigns/{campaign_id}", headers=headers), 200) == made

    tiers: list[dict[str, Any]] = [
        {"name": "Gold", "min_points": 500},
        {"name": "Silver", "min_points": 100},
    ]
    put_tiers = _data(client.put(f"{ADMIN}/tiers", json=tiers, headers=headers), 200)
    assert put_tiers == sorted(tiers, key=lambda t: t["min_points"])
    assert _data(client.get(f"{ADMIN}/tiers", headers=headers), 200) == put_tiers

    assert _data(client.get(f"{ADMIN}/settings", headers=headers), 200) == {
        "shortfall": "negative",
        "reversal_window_days": None,
    }
    wanted = {"shortfall": "clamp", "reversal_window_days": 30}
    assert _data(client.put(f"{ADMIN}/settings", json=wanted, headers=headers), 200) == wanted
    assert _data(client.get(f"{ADMIN}/settings", headers=headers), 200) == wanted
    # Settings and tiers live side by side: one PUT does not wipe the other.
    assert _data(client.get(f"{ADMIN}/tiers", headers=headers), 200) == put_tiers

    # Another brand sees none of it and cannot take the ids over.
    other = _token_for(client, World.create(db_factory))
    missing = client.get(f"{ADMIN}/rewards/{reward_id}", headers=other)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get(f"{ADMIN}/campaigns/{campaign_id}", headers=other).status_code == 404
    taken = client.put(f"{ADMIN}/rewards/{reward_id}", json=reward, headers=other)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "conflict"
    assert (
        _data(client.get(f"{ADMIN}/rewards/{reward_id}", headers=headers), 200)["name"]
        == "Twelve off"
    )
    assert _data(client.get(f"{ADMIN}/tiers", headers=other), 200) == []
    world.check()


# ---------------------------------------------------------------- the lifecycle


def test_event_is_recorded_resolved_and_reversed_over_http(
    client: TestClient, world: World, headers: Headers
) -> None:
    customer = uuid.uuid4()
    _resolved(client, headers, world, customer, accumulate=[100])
    before_wallet = _wallet(client, headers, customer)
    assert _balance(client, headers, world, customer) == 100
    before_lines = {(ln["id"], ln["remaining"]) for ln in before_wallet["lines"]}

    channel, store = uuid.uuid4(), uuid.uuid4()
    body = _event_body(
        world,
        customer,
        accumulate=[30, 20],
        redeem=[60],
        gift_cards=1,
        channel_id=str(channel),
        store_id=str(store),
        rewarding_campaigns=[{"id": str(world.campaign_id), "rules": ["spend>50"]}],
    )
    recorded = _submit(client, headers, body)
    _assert_seed_shape(recorded)
    assert recorded["reversal"] is None
    assert recorded["customer_id"] == str(customer)
    assert recorded["data"] == {"order": "A-1"}
    assert recorded["fulfilled"] is True
    assert recorded["result"]["transactions"] == []
    event_id = recorded["id"]
    first_message = recorded["queue_message_id"]
    assert _get(client, headers, event_id)["status"] == "PENDING"

    assert world.deliver(uuid.UUID(event_id)) == "RESOLVED"
    resolved = _get(client, headers, event_id)
    _assert_seed_shape(resolved)
    assert resolved["status"] == "RESOLVED"
    assert resolved["resolved_at"] is not None and resolved["processing_at"] is not None
    assert resolved["reversed_at"] is None
    assert resolved["queue_message_id"] == first_message
    assert resolved["channel_id"] == str(channel) and resolved["store_id"] == str(store)
    assert resolved["rewarding_campaigns"] == body["rewarding_campaigns"]
    kinds = sorted((tx["type"], tx["amount"]) for tx in resolved["result"]["transactions"])
    assert kinds == [("ACCUMULATION", 20), ("ACCUMULATION", 30), ("REDEMPTION", -60)]
    assert sorted(a["amount"] for a in resolved["result"]["accumulations"]) == [20, 30]
    assert sum(r["amount"] for r in resolved["result"]["redemptions"]) == 60
    assert len(resolved["result"]["gift_card"]) == 1
    assert resolved["result"]["gift_card"][0]["voided_at"] is None
    for tx in resolved["result"]["transactions"]:
        assert tx["channel_id"] == str(channel) and tx["store_id"] == str(store)
        assert tx["event_id"] == event_id and tx["brand_id"] == str(world.brand_id)
        assert tx["attributes"]["campaign_name"] == "Spring"
        assert tx["funded_by"] == "MARKETING"
    assert _balance(client, headers, world, customer) == 100 + 50 - 60
    world.check(customer)

    accepted = _reverse(client, headers, event_id, {"reason": "order refunded"})
    pending = _data(accepted, 202)
    _assert_seed_shape(pending)
    assert pending["status"] == "PENDING"
    assert pending["queue_message_id"] and pending["queue_message_id"] != first_message
    reversal = pending["reversal"]
    assert reversal["status"] == "PENDING"
    assert reversal["reason"] == "order refunded"
    assert reversal["requested_at"].endswith("Z")
    assert reversal["attempts"] == 0 and reversal["dead_lettered"] is False
    # Until the worker runs, nothing in the wallet moved.
    assert _balance(client, headers, world, customer) == 90

    assert world.deliver(uuid.UUID(event_id)) == "REVERSED"
    done = _get(client, headers, event_id)
    _assert_seed_shape(done)
    assert done["status"] == "REVERSED"
    assert done["reversed_at"] is not None and done["reversed_at"].endswith("Z")
    assert done["queue_message_id"] == pending["queue_message_id"]
    assert done["reversal"]["status"] == "REVERSED"
    assert done["reversal"]["attempts"] == 1
    originals = {tx["id"]: tx for tx in done["result"]["transactions"] if tx["type"] != "REVERSAL"}
    reversals = [tx for tx in done["result"]["transactions"] if tx["type"] == "REVERSAL"]
    assert sorted(tx["amount"] for tx in reversals if tx["amount"] < 0) == [-30, -20]
    for tx in reversals:
        assert tx["attributes"]["line"] is not None
        assert set(tx["attributes"]["line"]) >= SEED_LINE_KEYS
        assert tx["attributes"]["campaign_name"] == "Spring"
        assert tx["reverses_id"] in originals
        undone = originals[tx["reverses_id"]]
        assert undone["type"] in {"ACCUMULATION", "REDEMPTION"}
        assert (tx["amount"] < 0) == (undone["type"] == "ACCUMULATION")
    # Each original undone exactly once, redemptions back in full.
    assert sorted(tx["reverses_id"] for tx in reversals if tx["amount"] < 0) == sorted(
        i for i, tx in originals.items() if tx["type"] == "ACCUMULATION"
    )
    assert sum(tx["amount"] for tx in reversals if tx["amount"] > 0) == 60
    assert done["result"]["gift_card"][0]["voided_at"] is not None

    after_wallet = _wallet(client, headers, customer)
    assert _balance(client, headers, world, customer) == 100
    assert {(ln["id"], ln["remaining"]) for ln in after_wallet["lines"]} == before_lines
    assert done["result"]["wallet"]  # the snapshot after the reversal
    world.check(customer)


def test_reversing_a_reversed_event_answers_200_and_enqueues_nothing(
    client: TestClient, world: World, headers: Headers
) -> None:
    customer = uuid.uuid4()
    event_id = _resolved(client, headers, world, customer, accumulate=[25])
    first = _data(_reverse(client, headers, event_id), 202)
    # While in flight, the same request is the same answer: no second message.
    in_flight = _data(_reverse(client, headers, event_id), 202)
    assert in_flight["queue_message_id"] == first["queue_message_id"]
    assert world.deliver(event_id) == "REVERSED"
    done = _get(client, headers, event_id)
    transactions = _transactions(client, headers, customer)

    again = _data(_reverse(client, headers, event_id, {"reason": "refunded twice"}), 200)
    assert again["status"] == "REVERSED"
    assert again["queue_message_id"] == first["queue_message_id"]
    assert again["reversed_at"] == done["reversed_at"]
    assert again["reversal"]["reason"] == "order refunded"
    assert _get(client, headers, event_id) == done
    assert _transactions(client, headers, customer) == transactions
    # A stale delivery of the old message changes nothing either.
    assert world.deliver(event_id) == "IGNORED"
    assert _balance(client, headers, world, customer) == 0
    world.check(customer)


def test_an_event_not_yet_resolved_cannot_be_reversed(
    client: TestClient, world: World, headers: Headers
) -> None:
    customer = uuid.uuid4()
    event = _submit(client, headers, _event_body(world, customer, accumulate=[10]))
    refused = _reverse(client, headers, event["id"])
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "not_reversible"
    after = _get(client, headers, event["id"])
    assert after["status"] == "PENDING"
    assert after["queue_message_id"] == event["queue_message_id"]
    assert after["reversal"] is None
    world.check(customer)


# ---------------------------------------------------------------- bulk


def test_bulk_reverse_answers_one_result_per_item_in_order(
    client: TestClient, world: World, headers: Headers, db_factory: Any
) -> None:
    customer = uuid.uuid4()
    good_a = _resolved(client, headers, world, customer, accumulate=[10])
    good_b = _resolved(client, headers, world, customer, accumulate=[20])
    reversed_already = _resolved(client, headers, world, customer, accumulate=[30])
    _data(_reverse(client, headers, reversed_already), 202)
    world.deliver(reversed_already)
    reversed_message = _get(client, headers, reversed_already)["queue_message_id"]
    unknown = uuid.uuid4()
    pending = uuid.UUID(
        _submit(client, headers, _event_body(world, customer, accumulate=[5]))["id"]
    )

    other = World.create(db_factory)
    other_headers = _token_for(client, other)
    foreign = _resolved(client, other_headers, other, uuid.uuid4(), accumulate=[40])
    foreign_before = _get(client, other_headers, foreign)

    order = [good_a, reversed_already, unknown, foreign, pending, good_b]
    answer = client.post(
        f"{BASE}/behavior/events/reverse",
        json={"events": [{"id": str(i), "reason": "refund batch"} for i in order]},
        headers=headers,
    )
    results = _data(answer, 202)
    assert [r["id"] for r in results] == [str(i) for i in order]
    assert [r["status"] for r in results] == [
        "ACCEPTED",
        "ALREADY_REVERSED",
        "REJECTED",
        "REJECTED",
        "REJECTED",
        "ACCEPTED",
    ]
    for result in results:
        assert set(result) == {"id", "status", "queue_message_id", "error"}
    assert results[1]["queue_message_id"] == reversed_message
    assert results[1]["error"] is None
    assert results[2]["error"]["code"] == results[3]["error"]["code"] == "not_found"
    assert results[2]["queue_message_id"] is None and results[3]["queue_message_id"] is None
    assert results[4]["error"]["code"] == "not_reversible"
    for index in (0, 5):
        assert results[index]["error"] is None
        event = _get(client, headers, results[index]["id"])
        assert event["status"] == "PENDING"
        assert event["reversal"]["status"] == "PENDING"
        assert event["reversal"]["reason"] == "refund batch"
        assert event["queue_message_id"] == results[index]["queue_message_id"]
    # The refused items changed nothing, including the other brand's event.
    assert _get(client, other_headers, foreign) == foreign_before
    assert _get(client, headers, pending)["reversal"] is None

    # The first delivery takes the brand's other waiting reversal along: the second
    # finds it done.
    assert [world.deliver(good_a), world.deliver(good_b)] == ["REVERSED", "IGNORED"]
    assert world.get(good_a).status == world.get(good_b).status == "REVERSED"
    assert world.deliver(pending) == "RESOLVED"
    assert _balance(client, headers, world, customer) == 5
    world.check(customer)
    other.check()


# ---------------------------------------------------------------- dry run


def test_dry_run_shows_the_outcome_and_changes_nothing(
    client: TestClient, world: World, headers: Headers, db_factory: Any
) -> None:
    customer = uuid.uuid4()
    _resolved(client, headers, world, customer, accumulate=[100])
    event_id = _resolved(client, headers, world, customer, accumulate=[40], redeem=[70])
    wallet_before = _wallet(client, headers, customer)
    txs_before = _transactions(client, headers, customer)
    event_before = _get(client, headers, event_id)

    answer = _reverse(
        client, headers, event_id, {"reason": "what if", "dry_run": True, "shortfall": "clamp"}
    )
    preview = _data(answer, 200)
    assert preview["dry_run"] is True
    assert preview["status"] == "REVERSED"
    assert sorted(
        tx["amount"] for tx in preview["result"]["transactions"] if tx["type"] == "REVERSAL"
    ) == [
        -40,
        70,
    ]

    assert _wallet(client, headers, customer) == wallet_before
    assert _transactions(client, headers, customer) == txs_before
    assert _get(client, headers, event_id) == event_before
    with db_factory() as session:
        count = len(
            session.scalars(select(Transaction).where(Transaction.event_id == event_id)).all()
        )
    assert count == len(event_before["result"]["transactions"]) >= 2
    # The real reversal afterwards still works, and matches the preview.
    _data(_reverse(client, headers, event_id, {"reason": "for real", "shortfall": "clamp"}), 202)
    assert world.deliver(event_id) == "REVERSED"
    done = _get(client, headers, event_id)

    def undone(event: dict[str, Any]) -> list[tuple[str, int]]:
        txs = event["result"]["transactions"]
        return sorted((tx["reverses_id"], tx["amount"]) for tx in txs if tx["type"] == "REVERSAL")

    assert undone(done) == undone(preview)
    assert _balance(client, headers, world, customer) == 100
    world.check(customer)


def test_a_dry_run_that_would_fail_reports_it_and_changes_nothing(
    client: TestClient, world: World, headers: Headers
) -> None:
    customer = uuid.uuid4()
    earned = _resolved(client, headers, world, customer, accumulate=[100])
    _resolved(client, headers, world, customer, redeem=[80])
    before = _get(client, headers, earned)
    preview = _data(
        _reverse(client, headers, earned, {"reason": "x", "dry_run": True, "shortfall": "fail"}),
        200,
    )
    assert preview["dry_run"] is True
    assert preview["status"] == "FAILED"
    assert preview["reversal"]["last_error"]
    assert _get(client, headers, earned) == before
    assert _balance(client, headers, world, customer) == 20
    world.check(customer)


# ---------------------------------------------------------------- shortfall from settings


def test_brand_shortfall_setting_fail_refuses_a_reversal_that_would_go_negative(
    client: TestClient, world: World, headers: Headers
) -> None:
    _data(client.put(f"{ADMIN}/settings", json={"shortfall": "fail"}, headers=headers), 200)
    customer = uuid.uuid4()
    earned = _resolved(client, headers, world, customer, accumulate=[100])
    _resolved(client, headers, world, customer, redeem=[70])
    txs_before = _transactions(client, headers, customer)
    _data(_reverse(client, headers, earned), 202)
    assert world.deliver(earned) == "FAILED"
    failed = _get(client, headers, earned)
    assert failed["status"] == "FAILED"
    assert failed["reversal"]["status"] == "FAILED"
    assert failed["reversal"]["last_error"]
    assert _balance(client, headers, world, customer) == 30
    assert _transactions(client, headers, customer) == txs_before
    world.check(customer)

    # A failed reversal may be asked for again, with a policy that lets it through.
    retry = _data(_reverse(client, headers, earned, {"reason": "again", "shortfall": "clamp"}), 202)
    assert retry["queue_message_id"] != failed["queue_message_id"]
    assert world.deliver(earned) == "REVERSED"
    assert _balance(client, headers, world, customer) == 0
    assert _get(client, headers, earned)["reversal"]["shortfall"]["total"] == 70
    world.check(customer)


def test_tier_table_moves_the_customer_and_the_reversal_moves_them_back(
    client: TestClient, world: World, headers: Headers
) -> None:
    tiers = [{"name": "Silver", "min_points": 100}, {"name": "Gold", "min_points": 500}]
    _data(client.put(f"{ADMIN}/tiers", json=tiers, headers=headers), 200)
    customer = uuid.uuid4()
    _resolved(client, headers, world, customer, accumulate=[150])
    assert _wallet(client, headers, customer)["tier"] == "Silver"
    big = _resolved(client, headers, world, customer, accumulate=[400])
    promoted = _get(client, headers, big)
    assert _wallet(client, headers, customer)["tier"] == "Gold"
    assert [(c["from_tier"], c["to_tier"]) for c in promoted["result"]["customer_by_tier"]] == [
        ("Silver", "Gold")
    ]
    _data(_reverse(client, headers, big), 202)
    world.deliver(big)
    demoted = _get(client, headers, big)
    assert [(c["from_tier"], c["to_tier"]) for c in demoted["result"]["customer_by_tier"]] == [
        ("Silver", "Gold"),
        ("Gold", "Silver"),
    ]
    assert demoted["result"]["customer"]["tier"] == "Silver"
    assert _wallet(client, headers, customer)["tier"] == "Silver"
    world.check(customer)


# ---------------------------------------------------------------- idempotency keys


def test_idempotency_key_replays_the_same_answer_and_refuses_another_body(
    client: TestClient, world: World, headers: Headers
) -> None:
    customer = uuid.uuid4()
    event_id = _resolved(client, headers, world, customer, accumulate=[10])
    other_event = _resolved(client, headers, world, customer, accumulate=[15])
    key = {"Idempotency-Key": f"refund-{uuid.uuid4()}"}
    body = {"reason": "duplicate order"}

    first = _reverse(client, headers, event_id, body, key)
    assert first.status_code == 202, first.text
    second = _reverse(client, headers, event_id, body, key)
    assert second.status_code == 202
    assert second.json() == first.json()
    assert (
        _get(client, headers, event_id)["queue_message_id"]
        == first.json()["data"]["queue_message_id"]
    )

    for changed_body, target in (
        ({"reason": "another reason"}, event_id),
        ({"reason": "duplicate order", "shortfall": "clamp"}, event_id),
        (body, other_event),
    ):
        conflict = _reverse(client, headers, target, changed_body, key)
        assert conflict.status_code == 409, conflict.text
        error = conflict.json()["error"]
        assert error["code"] == "idempotency_key_reused"
        assert set(error) == {"code", "message", "details"}
    assert _get(client, headers, other_event)["status"] == "RESOLVED"
    assert _get(client, headers, other_event)["reversal"] is None

    # After the worker has run, the same key still replays the first answer.
    assert world.deliver(event_id) == "REVERSED"
    third = _reverse(client, headers, event_id, body, key)
    assert (third.status_code, third.json()) == (202, first.json())
    assert _balance(client, headers, world, customer) == 15
    world.check(customer)


# ---------------------------------------------------------------- transactions paging


def test_transactions_are_newest_first_with_cursor_paging(
    client: TestClient, world: World, headers: Headers, db_factory: Any
) -> None:
    customer = uuid.uuid4()
    for amount in (1, 2, 3):
        _resolved(client, headers, world, customer, accumulate=[amount])
    spent = _resolved(client, headers, world, customer, redeem=[4])
    _data(_reverse(client, headers, spent), 202)
    world.deliver(spent)

    with db_factory() as session:
        expected = [
            str(tx.id)
            for tx in session.scalars(
                select(Transaction)
                .where(Transaction.customer_id == customer)
                .order_by(Transaction.seq.desc())
            )
        ]
    assert len(expected) >= 6

    first_page = client.get(
        f"{BASE}/customers/{customer}/transactions", params={"limit": 2}, headers=headers
    )
    assert first_page.status_code == 200
    page = first_page.json()
    assert [tx["id"] for tx in page["data"]] == expected[:2]
    assert isinstance(page["next_cursor"], int)
    assert page["data"][0]["type"] == "REVERSAL"

    paged = _transactions(client, headers, customer, limit=2)
    assert [tx["id"] for tx in paged] == expected
    assert len({tx["id"] for tx in paged}) == len(paged)
    whole = _transactions(client, headers, customer)
    assert [tx["id"] for tx in whole] == expected
    for tx in whole:
        assert set(tx) >= SEED_TRANSACTION_KEYS
    _assert_timestamps_are_utc_z(whole)
    created = [tx["created_at"] for tx in whole]
    assert created == sorted(created, reverse=True)

    # A cursor past the end is an empty last page.
    last = client.get(
        f"{BASE}/customers/{customer}/transactions", params={"cursor": 1}, headers=headers
    ).json()
    assert last == {"data": [], "next_cursor": None}
    world.check(customer)


def test_bulk_sends_its_events_in_batches_each_reversed_once(
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Accepted items travel BULK_BATCH_SIZE to a message; a batch's delivery reverses
    its events one by one, an event's refusal stays its own, a redelivery does nothing."""
    monkeypatch.setattr(get_settings(), "bulk_batch_size", 2)
    sent: list[tuple[str, list[uuid.UUID]]] = []
    monkeypatch.setattr("worker.intake.publish_batch", lambda mid, ids: sent.append((mid, ids)))
    singles: list[tuple[str, uuid.UUID, str]] = []
    monkeypatch.setattr(
        "worker.intake.publish", lambda task, event_id, mid: singles.append((task, event_id, mid))
    )
    first, second = uuid.uuid4(), uuid.uuid4()
    spent = _resolved(client, headers, world, first, accumulate=[10])
    _resolved(client, headers, world, first, redeem=[8])  # spends 8 of `spent`'s 10
    others = [_resolved(client, headers, world, second, accumulate=[n]) for n in (1, 2, 3, 4)]
    order = [others[0], spent, others[1], others[2], others[3]]
    singles.clear()  # the events' own first processing
    answer = client.post(
        f"{BASE}/behavior/events/reverse",
        json={
            "events": [{"id": str(i), "reason": "refund batch"} for i in order],
            "shortfall": "fail",
        },
        headers=headers,
    )
    results = _data(answer, 202)
    assert [r["status"] for r in results] == ["ACCEPTED"] * 5
    # Two messages of 2 events, in the request's order, and the last event alone as a
    # single reversal's message; each item answered with the message id it travels under.
    assert [ids for _, ids in sent] == [order[0:2], order[2:4]]
    assert [(task, event_id) for task, event_id, _ in singles] == [
        ("reversals.reverse_event", order[4])
    ]
    message_ids = [sent[0][0], sent[0][0], sent[1][0], sent[1][0], singles[0][2]]
    assert [r["queue_message_id"] for r in results] == message_ids

    # Each message does its own events only (take=0: none taken along).
    outcomes = [handle_batch(ids, mid, db_factory, take=0) for mid, ids in sent]
    alone = deliver(order[4], singles[0][2], db_factory, take=0).outcomes
    # `spent` would leave a shortfall of 8 under `fail`: FAILED alone, its batch goes on.
    assert outcomes == [{"REVERSED": 1, "FAILED": 1}, {"REVERSED": 2}]
    assert alone == {order[4]: "REVERSED"}
    assert _get(client, headers, spent)["status"] == "FAILED"
    assert _balance(client, headers, world, first) == 2
    assert _balance(client, headers, world, second) == 0
    # A redelivery of every message changes nothing.
    again = [handle_batch(ids, mid, db_factory) for mid, ids in sent]
    assert again == [{"IGNORED": 2}, {"IGNORED": 2}]
    assert deliver(order[4], singles[0][2], db_factory).outcomes == {order[4]: "IGNORED"}
    assert _balance(client, headers, world, first) == 2
    assert _balance(client, headers, world, second) == 0
    world.check(first)
    world.check(second)
