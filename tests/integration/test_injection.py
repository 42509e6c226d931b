"""SQL injection and hostile text in every text field (SPEC §4: only bound parameters).

Each field gets classic injection strings, a NUL, a lone surrogate, Unicode and a
very long string. Every answer is a 2xx or a 4xx (never a 5xx); where the text was
accepted, what PostgreSQL stored equals what was sent; every table is still there
with every row it had; and the SPEC §3 invariants hold.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select, text

from tests.support import World
from worker.ledger.invariants import assert_invariants
from worker.models import (
    Base,
    Brand,
    Campaign,
    Event,
    GiftCard,
    IdempotencyKey,
    Reward,
)

BASE = "/api/storefront/v1"
ADMIN = "/api/admin/v1"
EVENTS = f"{BASE}/behavior/events"
Headers = dict[str, str]

PAYLOADS: dict[str, str] = {
    "drop table": "'; DROP TABLE events; --",
    "or 1=1": "' OR '1'='1",
    "union select": "x' UNION SELECT key_hash, prefix FROM api_keys --",
    "stacked": "1); DELETE FROM transactions; SELECT pg_sleep(5); --",
    "comment": "*/ DROP TABLE lines /*",
    "dollar quote": "$$; TRUNCATE wallets; $$",
    "placeholders": "%s %(id)s {0} $1 :name ?",
    "quotes": "\"\\'`\\\\",
    "nul": "\x00",
    "nul inside": "ab\x00cd'; DROP TABLE events; --",
    "unicode": "Ünïcødé 日本語 🎉 \u202eevil \u200b",
    "lone surrogate": "\ud800",
    "control": "\x01\x1b[31m\r\n\t",
    "150 characters": "O'Brien; DROP TABLE events; --" * 5,
    "very long": "'; DROP TABLE events; --" * 2000,
}


@dataclass
class Ctx:
    client: TestClient
    headers: Headers
    world: World
    factory: Callable[[], Any]

    def send(
        self, method: str, url: str, body: Any = None, headers: dict[str, Any] | None = None
    ) -> Response:
        # json.dumps escapes a lone surrogate as \\ud800, which httpx's encoder would refuse.
        content = None if body is None else json.dumps(body).encode()
        answer: Response = self.client.request(
            method,
            url,
            content=content,
            headers={**self.headers, "Content-Type": "application/json", **(headers or {})},
        )
        return answer

    def resolved_event(self) -> uuid.UUID:
        return self.world.event(uuid.uuid4(), accumulate=[10])


def _event(ctx: Ctx, **extra: Any) -> dict[str, Any]:
    return {
        "customer_id": str(uuid.uuid4()),
        "accumulate": [
            {
                "reward_id": str(ctx.world.reward_id),
                "campaign_id": str(ctx.world.campaign_id),
                "amount": 10,
            }
        ],
        **extra,
    }


def _stored_event(ctx: Ctx, answer: Response) -> Event:
    with ctx.factory() as session:
        event: Event = session.get_one(Event, uuid.UUID(answer.json()["data"]["id"]))
        return event


# ---------------------------------------------------------------- the fields
# Each: send(ctx, s) -> the answer; stored(ctx, answer, s) checks, when it was
# accepted, that what PostgreSQL holds is exactly s (or s stripped, where the field
# strips surrounding whitespace).


def _send_type(ctx: Ctx, s: str) -> Response:
    return ctx.send("POST", EVENTS, _event(ctx, type=s))


def _stored_type(ctx: Ctx, answer: Response, s: str) -> None:
    assert _stored_event(ctx, answer).type == s


def _send_data_value(ctx: Ctx, s: str) -> Response:
    return ctx.send("POST", EVENTS, _event(ctx, data={"note": s, "nested": [{"deep": s}]}))


def _stored_data_value(ctx: Ctx, answer: Response, s: str) -> None:
    assert _stored_event(ctx, answer).data == {"note": s, "nested": [{"deep": s}]}
    again = ctx.send("GET", f"{EVENTS}/{answer.json()['data']['id']}")
    assert again.json()["data"]["data"]["note"] == s


def _send_data_key(ctx: Ctx, s: str) -> Response:
    return ctx.send("POST", EVENTS, _event(ctx, data={s: "value"}))


def _stored_data_key(ctx: Ctx, answer: Response, s: str) -> None:
    assert _stored_event(ctx, answer).data == {s: "value"}


def _send_rewarding_campaigns(ctx: Ctx, s: str) -> Response:
    return ctx.send("POST", EVENTS, _event(ctx, rewarding_campaigns=[s, {"name": s}]))


def _stored_rewarding_campaigns(ctx: Ctx, answer: Response, s: str) -> None:
    assert _stored_event(ctx, answer).rewarding_campaigns == [s, {"name": s}]


def _gift_card_event(ctx: Ctx, card: dict[str, Any]) -> dict[str, Any]:
    return _event(ctx, gift_cards=[{"reward_id": str(ctx.world.reward_id), **card}])


def _send_gift_card_description(ctx: Ctx, s: str) -> Response:
    return ctx.send("POST", EVENTS, _gift_card_event(ctx, {"description": s}))


def _stored_gift_card_description(ctx: Ctx, answer: Response, s: str) -> None:
    event_id = uuid.UUID(answer.json()["data"]["id"])
    assert ctx.world.deliver(event_id) == "RESOLVED"
    with ctx.factory() as session:
        card = session.scalars(select(GiftCard).where(GiftCard.event_id == event_id)).one()
        assert card.description == s


def _send_gift_card_code(ctx: Ctx, s: str) -> Response:
    return ctx.send("POST", EVENTS, _gift_card_event(ctx, {"code": s}))


def _stored_gift_card_code(ctx: Ctx, answer: Response, s: str) -> None:
    event_id = uuid.UUID(answer.json()["data"]["id"])
    assert ctx.world.deliver(event_id) == "RESOLVED"
    with ctx.factory() as session:
        assert (
            session.scalars(select(GiftCard.code).where(GiftCard.event_id == event_id)).one() == s
        )


def _send_reason(ctx: Ctx, s: str) -> Response:
    return ctx.send("POST", f"{EVENTS}/{ctx.resolved_event()}/reverse", {"reason": s})


def _stored_reason(ctx: Ctx, answer: Response, s: str) -> None:
    assert _stored_event(ctx, answer).reversal_reason == s.strip()
    assert answer.json()["data"]["reversal"]["reason"] == s.strip()


def _send_dry_run_reason(ctx: Ctx, s: str) -> Response:
    return ctx.send(
        "POST", f"{EVENTS}/{ctx.resolved_event()}/reverse", {"reason": s, "dry_run": True}
    )


def _stored_dry_run_reason(ctx: Ctx, answer: Response, s: str) -> None:
    assert answer.status_code == 200
    assert _stored_event(ctx, answer).status == "RESOLVED"  # a dry run stores nothing


def _send_bulk_reason(ctx: Ctx, s: str) -> Response:
    return ctx.send(
        "POST", f"{EVENTS}/reverse", {"events": [{"id": str(ctx.resolved_event()), "reason": s}]}
    )


def _stored_bulk_reason(ctx: Ctx, answer: Response, s: str) -> None:
    (item,) = answer.json()["data"]
    assert item["status"] == "ACCEPTED", item
    with ctx.factory() as session:
        assert session.get_one(Event, uuid.UUID(item["id"])).reversal_reason == s.strip()


def _header(s: str) -> bytes:
    # HTTP header values travel as bytes; the server reads them as latin-1.
    return s.encode("utf-8", "surrogatepass")


def _send_idempotency_key(ctx: Ctx, s: str) -> Response:
    return ctx.send(
        "POST",
        f"{EVENTS}/{ctx.resolved_event()}/reverse",
        {"reason": "refund"},
        headers={"Idempotency-Key": _header(s)},
    )


def _stored_idempotency_key(ctx: Ctx, answer: Response, s: str) -> None:
    event_id = answer.json()["data"]["id"]
    with ctx.factory() as session:
        rows = session.scalars(
            select(IdempotencyKey).where(IdempotencyKey.brand_id == ctx.world.brand_id)
        )
        keys = [row.key for row in rows if row.response["data"]["id"] == event_id]
    assert len(keys) == 1
    if s.encode("utf-8", "surrogatepass") == s.encode("utf-8", "replace"):
        # The server reads header bytes as latin-1; that text is what it keeps. (The test
        # client re-encodes bytes that are not UTF-8, so only this case is exact.)
        assert keys[0] == _header(s).decode("latin-1")
    replay = _send_idempotency_key_to(ctx, uuid.UUID(event_id), s)
    assert replay.status_code == answer.status_code and replay.json() == answer.json()


def _send_idempotency_key_to(ctx: Ctx, event_id: uuid.UUID, s: str) -> Response:
    return ctx.send(
        "POST",
        f"{EVENTS}/{event_id}/reverse",
        {"reason": "refund"},
        headers={"Idempotency-Key": _header(s)},
    )


def _send_reward_name(ctx: Ctx, s: str) -> Response:
    return ctx.send("PUT", f"{ADMIN}/rewards/{uuid.uuid4()}", {"type": "POINTS", "name": s})


def _stored_reward_name(ctx: Ctx, answer: Response, s: str) -> None:
    with ctx.factory() as session:
        reward = session.get_one(Reward, uuid.UUID(answer.json()["data"]["id"]))
        assert reward.name == s.strip()


def _send_campaign_name(ctx: Ctx, s: str) -> Response:
    return ctx.send("PUT", f"{ADMIN}/campaigns/{uuid.uuid4()}", {"name": s})


def _stored_campaign_name(ctx: Ctx, answer: Response, s: str) -> None:
    with ctx.factory() as session:
        campaign = session.get_one(Campaign, uuid.UUID(answer.json()["data"]["id"]))
        assert campaign.name == s.strip()


def _send_funded_by(ctx: Ctx, s: str) -> Response:
    return ctx.send("PUT", f"{ADMIN}/campaigns/{uuid.uuid4()}", {"name": "c", "funded_by": s})


def _stored_funded_by(ctx: Ctx, answer: Response, s: str) -> None:
    with ctx.factory() as session:
        campaign = session.get_one(Campaign, uuid.UUID(answer.json()["data"]["id"]))
        assert campaign.funded_by == s


def _send_tier_name(ctx: Ctx, s: str) -> Response:
    return ctx.send("PUT", f"{ADMIN}/tiers", [{"name": s, "min_points": 0}])


def _stored_tier_name(ctx: Ctx, answer: Response, s: str) -> None:
    with ctx.factory() as session:
        tiers = session.get_one(Brand, ctx.world.brand_id).settings["tiers"]
        assert tiers == [{"name": s.strip(), "min_points": 0}]
    # The worker writes the tier name on the customer: it must fit there too.
    customer = uuid.uuid4()
    ctx.world.event(customer, accumulate=[5])
    answer = ctx.send("GET", f"{BASE}/customers/{customer}/wallet")
    assert answer.status_code == 200 and answer.json()["data"]["tier"] == s.strip()


def _send_shortfall(ctx: Ctx, s: str) -> Response:
    return ctx.send("PUT", f"{ADMIN}/settings", {"shortfall": s})


def _url_part(s: str) -> str:
    # URLs are capped by clients and servers (8 KiB is common): the long case is cut there.
    return urllib.parse.quote(s[:8000].encode("utf-8", "surrogatepass"), safe="")


def _send_path_id(ctx: Ctx, s: str) -> Response:
    quoted = _url_part(s)
    return ctx.send("GET", f"{EVENTS}/{quoted}")


def _send_query(ctx: Ctx, s: str) -> Response:
    quoted = _url_part(s)
    return ctx.send("GET", f"{BASE}/customers/{uuid.uuid4()}/transactions?cursor={quoted}")


def _send_customer_id(ctx: Ctx, s: str) -> Response:
    return ctx.send("POST", EVENTS, _event(ctx, customer_id=s))


def _send_api_key(ctx: Ctx, s: str) -> Response:
    answer: Response = ctx.client.get(f"{BASE}/auth/authorize", headers={"x-api-key": _header(s)})
    return answer


def _send_bearer(ctx: Ctx, s: str) -> Response:
    answer: Response = ctx.client.get(
        f"{EVENTS}/{uuid.uuid4()}", headers={"Authorization": b"Bearer " + _header(s)}
    )
    return answer


Stored = Callable[[Ctx, Response, str], None]
FIELDS: dict[str, tuple[Callable[[Ctx, str], Response], Stored | None]] = {
    "event type": (_send_type, _stored_type),
    "data values": (_send_data_value, _stored_data_value),
    "data keys": (_send_data_key, _stored_data_key),
    "rewarding_campaigns": (_send_rewarding_campaigns, _stored_rewarding_campaigns),
    "gift card description": (_send_gift_card_description, _stored_gift_card_description),
    "gift card code": (_send_gift_card_code, _stored_gift_card_code),
    "reason": (_send_reason, _stored_reason),
    "dry-run reason": (_send_dry_run_reason, _stored_dry_run_reason),
    "bulk reason": (_send_bulk_reason, _stored_bulk_reason),
    "Idempotency-Key header": (_send_idempotency_key, _stored_idempotency_key),
    "reward name": (_send_reward_name, _stored_reward_name),
    "campaign name": (_send_campaign_name, _stored_campaign_name),
    "funded_by": (_send_funded_by, _stored_funded_by),
    "tier name": (_send_tier_name, _stored_tier_name),
    "shortfall policy": (_send_shortfall, None),
    "event id in the path": (_send_path_id, None),
    "cursor in the query": (_send_query, None),
    "customer id": (_send_customer_id, None),
    "x-api-key header": (_send_api_key, None),
    "bearer token": (_send_bearer, None),
}


# ---------------------------------------------------------------- the database, intact


def _census(factory: Callable[[], Any]) -> dict[str, int]:
    """Every table of the schema, by name in the catalogue, with its row count."""
    with factory() as session:
        present = set(
            session.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        )
        counts = {}
        for table in Base.metadata.sorted_tables:
            assert table.name in present, f"table {table.name} is gone"
            counts[table.name] = int(session.scalar(select(func.count()).select_from(table)) or 0)
        return counts


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_hostile_text_in_every_field_is_stored_verbatim_or_refused(
    client: TestClient, world: World, headers: Headers, db_factory: Callable[[], Any], field: str
) -> None:
    ctx = Ctx(client, headers, world, db_factory)
    ctx.resolved_event()  # a ledger with something in it to lose
    send, stored = FIELDS[field]
    outcomes: dict[str, int] = {}
    for name, payload in PAYLOADS.items():
        before = _census(db_factory)
        answer = send(ctx, payload)
        outcomes[name] = answer.status_code
        assert answer.status_code < 500, (field, name, answer.text[:300])
        if answer.status_code >= 400:
            body = answer.json()
            assert set(body) == {"error"} and body["error"]["code"], (field, name, body)
        after = _census(db_factory)
        # Nothing deleted anywhere (an accepted request may add rows, never remove one).
        assert all(after[t] >= before[t] for t in before), (field, name, before, after)
        if answer.is_success and stored is not None:
            stored(ctx, answer, payload)
        with db_factory() as session:
            assert_invariants(session)
    # The control: the injection strings reached the field's validation at all, and
    # fields that take free text took the harmless ones.
    assert set(outcomes.values()) <= {200, 202, 401, 404, 409, 413, 422}, outcomes
    if field in FREE_TEXT:
        assert outcomes["drop table"] in (200, 202), outcomes
        assert outcomes["unicode"] in (200, 202), outcomes


FREE_TEXT = {
    "data values",
    "data keys",
    "rewarding_campaigns",
    "gift card description",
    "reason",
    "dry-run reason",
    "bulk reason",
    "Idempotency-Key header",
    "reward name",
    "campaign name",
    "tier name",
}


def _raw_event(ctx: Ctx, data: bytes) -> Response:
    customer = str(uuid.uuid4()).encode()
    raw = b'{"customer_id": "' + customer + b'", "data": {"x": ' + data + b"}}"
    answer: Response = ctx.client.post(
        EVENTS, content=raw, headers={**ctx.headers, "Content-Type": "application/json"}
    )
    return answer


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"1e400", "validation_error"),  # parsed as infinity: neither JSON out nor jsonb in
        (b"NaN", "validation_error"),
        (b"-Infinity", "validation_error"),
        (b"[" * 40 + b"]" * 40, "validation_error"),  # deeper than the schemas' MAX_DEPTH
        (b"[" * 900 + b"]" * 900, "validation_error"),  # deeper than the JSON encoder goes
        (b"[" * 5000 + b"]" * 5000, "malformed_json"),  # deeper than the JSON parser goes
        (b"9" * 5000, "malformed_json"),  # more digits than Python converts to an int
        (b'"\xff\xfe"', "malformed_json"),  # not UTF-8
    ],
    ids=[
        "1e400",
        "NaN",
        "-Infinity",
        "depth 40",
        "depth 900",
        "depth 5000",
        "5000 digits",
        "bad UTF-8",
    ],
)
def test_numbers_and_nesting_postgresql_cannot_take_are_refused(
    *,
    client: TestClient,
    world: World,
    headers: Headers,
    db_factory: Callable[[], Any],
    data: bytes,
    code: str,
) -> None:
    ctx = Ctx(client, headers, world, db_factory)
    before = _census(db_factory)
    answer = _raw_event(ctx, data)
    assert answer.status_code == 422, answer.text[:300]
    assert answer.json()["error"]["code"] == code
    assert _census(db_factory) == before


def test_deep_but_reasonable_data_and_huge_integers_are_stored_verbatim(
    client: TestClient, world: World, headers: Headers, db_factory: Callable[[], Any]
) -> None:
    ctx = Ctx(client, headers, world, db_factory)
    for data in (b"[" * 30 + b"]" * 30, b"9" * 4000, b"-0.0", b"1e-300"):
        answer = _raw_event(ctx, data)
        assert answer.status_code == 202, answer.text[:300]
        assert _stored_event(ctx, answer).data == {"x": json.loads(data)}
        again = ctx.send("GET", f"{EVENTS}/{answer.json()['data']['id']}")
        assert again.json()["data"]["data"] == {"x": json.loads(data)}
