"""The OpenAPI document (/openapi.json, /docs) says what the API answers (SPEC §4).

1. The reverse endpoint's 202 schema holds every field of the seed document's
   JSON example (docs/seed/reverse-event-api.txt, a copy of ../shared/seed/), nested
   objects and lists included, each required and of the example's type, with its enums.
2. Every route declares the error envelope for its 4xx answers.
3. Real answers, made through the app on the real database, validate against the
   declared models (which forbid unknown fields): the document describes the
   bodies exactly, and the bodies are what they were (test_api keeps checking them).
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api_stub import responses as docs
from api_stub.app import create_app
from tests.support import World
from worker.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
# A copy of ../shared/seed/reverse-event-api.txt, kept in the repo so a clone alone tests.
SEED = ROOT / "docs" / "seed" / "reverse-event-api.txt"
BASE = "/api/storefront/v1"
ADMIN = "/api/admin/v1"
REVERSE = f"{BASE}/behavior/events/{{event_id}}/reverse"
DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
Schema = dict[str, Any]


# --- the seed --------------------------------------------------------------------


def seed_example() -> dict[str, Any]:
    """The `data` object of the seed's JSON example (the first one after the curl)."""
    text = SEED.read_text()
    start = text.index('{\n"data"')
    document, _ = json.JSONDecoder().raw_decode(text, start)
    data: dict[str, Any] = document["data"]
    return data


def seed_enums() -> set[tuple[str, ...]]:
    """The seed's enum lists, e.g. "PENDING, PROCESSING, ... REVERSED The result of..."."""
    found = re.findall(r"^((?:[A-Z_]+, )+[A-Z_]+)\b", SEED.read_text(), flags=re.MULTILINE)
    return {tuple(item.split(", ")) for item in found}


# --- the document ----------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> Schema:
    document: Schema = create_app(get_settings()).openapi()
    return document


def resolve(schema: Schema, document: Schema) -> Schema:
    """Follow $ref, and take X out of an `X or null`."""
    components = document["components"]["schemas"]
    while True:
        if "$ref" in schema:
            schema = components[schema["$ref"].rsplit("/", 1)[1]]
            continue
        options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
        if len(options) == 1 and len(schema["anyOf"]) == 2:
            schema = options[0]
            continue
        return schema


def response_schema(document: Schema, path: str, method: str, status: int) -> Schema:
    answer = document["paths"][path][method]["responses"][str(status)]
    return resolve(answer["content"]["application/json"]["schema"], document)


def _leaf_problem(example: Any, schema: Schema) -> str | None:
    kind, fmt = schema.get("type"), schema.get("format")
    if isinstance(example, bool):
        expected, ok = "boolean", kind == "boolean"
    elif isinstance(example, int):
        expected, ok = "number", kind in ("integer", "number")
    elif example == "<array>":
        expected, ok = "array", kind == "array"
    elif isinstance(example, str) and DATE_TIME.match(example):
        expected, ok = "date-time", kind == "string" and fmt == "date-time"
    elif isinstance(example, str) and UUID.match(example):
        expected, ok = "uuid", kind == "string" and fmt in (None, "uuid")
    elif isinstance(example, str):
        expected, ok = "string", kind == "string"
    else:
        return None
    return None if ok else f"{expected} expected, schema says {kind}/{fmt}"


def missing(example: Any, schema: Schema, document: Schema, path: str = "data") -> list[str]:
    """Every field of the example the schema lacks, does not require, or types otherwise."""
    schema = resolve(schema, document)
    if isinstance(example, dict):
        if not example:
            return [] if schema.get("type") == "object" else [f"{path}: object expected"]
        properties = schema.get("properties")
        if properties is None:
            return [f"{path}: an object with properties expected"]
        problems = []
        for key, value in example.items():
            if key not in properties:
                problems.append(f"{path}.{key}: missing")
                continue
            if key not in schema.get("required", []):
                problems.append(f"{path}.{key}: not required")
            problems += missing(value, properties[key], document, f"{path}.{key}")
        return problems
    if isinstance(example, list):
        if schema.get("type") != "array":
            return [f"{path}: array expected"]
        return missing(example[0], schema["items"], document, f"{path}[]") if example else []
    problem = _leaf_problem(example, schema)
    return [f"{path}: {problem}"] if problem else []


def enums(document: Schema) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "enum" in node and len(node["enum"]) > 2:
                found.add(tuple(node["enum"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document["components"]["schemas"])
    return found


# --- 1. the reverse endpoint against the seed -------------------------------------


def test_the_seed_example_parses_into_the_fields_it_documents() -> None:
    example = seed_example()
    assert {"id", "queue_message_id", "status", "result", "reversed_at"} <= set(example)
    assert set(example["result"]["transactions"][0]["attributes"]["line"]) >= {"amount"}
    assert ("POINTS", "DISCOUNT", "GIFT_CARD", "PRODUCT") in seed_enums()


def test_the_reverse_answer_has_every_field_of_the_seed(openapi: Schema) -> None:
    schema = response_schema(openapi, REVERSE, "post", 202)
    assert missing(seed_example(), schema["properties"]["data"], openapi) == []
    # The SPEC's extensions of the event.
    event = resolve(schema["properties"]["data"], openapi)
    for extension in ("brand_id", "channel_id", "store_id", "error", "reversal"):
        assert extension in event["properties"] and extension in event["required"]
    # 200 (already reversed, dry run) is the same event.
    assert response_schema(openapi, REVERSE, "post", 200) == schema


def test_the_seed_enums_are_the_documents_enums(openapi: Schema) -> None:
    assert seed_enums() <= enums(openapi)


def test_the_comparison_fails_when_a_seed_field_is_missing(openapi: Schema) -> None:
    broken = copy.deepcopy(openapi)
    components = broken["components"]["schemas"]
    del components["EventOut"]["properties"]["queue_message_id"]
    del components["TransactionAttributesOut"]["properties"]["campaign_name"]
    components["LineOut"]["required"].remove("expiration_date")
    components["GiftCardOut"]["properties"]["rewarded_at"] = {"type": "string"}
    schema = response_schema(broken, REVERSE, "post", 202)["properties"]["data"]
    problems = missing(seed_example(), schema, broken)
    assert "data.queue_message_id: missing" in problems
    assert "data.result.transactions[].attributes.campaign_name: missing" in problems
    assert "data.result.accumulations[].expiration_date: not required" in problems
    assert any(p.startswith("data.result.gift_card[].rewarded_at: date-time") for p in problems)


# --- 2. errors -------------------------------------------------------------------


def test_every_route_documents_its_error_envelope(openapi: Schema) -> None:
    envelope = resolve({"$ref": "#/components/schemas/ErrorResponse"}, openapi)
    assert envelope["required"] == ["error"]
    error = resolve(envelope["properties"]["error"], openapi)
    assert set(error["properties"]) == {"code", "message", "details"}
    for status in (401, 404, 409, 413, 422, 429):
        assert response_schema(openapi, REVERSE, "post", status) == envelope
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = resolve(answer["content"]["application/json"]["schema"], openapi)
                    assert schema == envelope, (method, path, status)
    # FastAPI's own {"detail": [...]} shape is never what a 422 here looks like.
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_docs_and_openapi_json_are_served() -> None:
    with TestClient(create_app(get_settings())) as http:
        served = http.get("/openapi.json")
        assert served.status_code == 200
        assert served.json()["paths"][REVERSE]["post"]["responses"]["202"]
        page = http.get("/docs")
        assert page.status_code == 200 and "/openapi.json" in page.text


# --- 3. real answers against the models -------------------------------------------


def _valid(model: type[BaseModel], answer: Any, status: int) -> Any:
    assert answer.status_code == status, answer.text
    model.model_validate(answer.json())
    return answer.json()


def test_real_answers_match_the_documented_models(
    client: TestClient, headers: dict[str, str], world: World
) -> None:
    reward, campaign = str(world.reward_id), str(world.campaign_id)
    customer = str(uuid.uuid4())
    token = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": world.api_key})
    _valid(docs.TokenResponse, token, 200)

    def line(amount: int) -> dict[str, Any]:
        return {"reward_id": reward, "campaign_id": campaign, "amount": amount}

    first = _valid(
        docs.EventResponse,
        client.post(
            f"{BASE}/behavior/events",
            json={"customer_id": customer, "accumulate": [line(300), line(200)]},
            headers=headers,
        ),
        202,
    )["data"]
    world.deliver(uuid.UUID(first["id"]))
    body = {
        "customer_id": customer,
        "data": {"order": "A-1"},
        "accumulate": [line(50)],
        "redeem": [{"reward_id": reward, "amount": 250}],
        "gift_cards": [{"reward_id": reward, "description": "card"}],
    }
    second = _valid(
        docs.EventResponse, client.post(f"{BASE}/behavior/events", json=body, headers=headers), 202
    )["data"]
    second_id = uuid.UUID(second["id"])
    world.deliver(second_id)
    resolved = _valid(
        docs.EventResponse, client.get(f"{BASE}/behavior/events/{second_id}", headers=headers), 200
    )["data"]
    assert resolved["status"] == "RESOLVED" and resolved["result"]["transactions"]
    assert resolved["result"]["gift_card"] and resolved["result"]["redemptions"]

    dry = _valid(
        docs.EventResponse,
        client.post(
            f"{BASE}/behavior/events/{second_id}/reverse",
            json={"reason": "try", "dry_run": True},
            headers=headers,
        ),
        200,
    )["data"]
    assert dry["dry_run"] is True
    accepted = _valid(
        docs.EventResponse,
        client.post(
            f"{BASE}/behavior/events/{second_id}/reverse",
            json={"reason": "refund"},
            headers=headers,
        ),
        202,
    )["data"]
    assert accepted["reversal"]["status"] == "PENDING"
    world.deliver(second_id)
    reversed_ = _valid(
        docs.EventResponse,
        client.post(
            f"{BASE}/behavior/events/{second_id}/reverse", json={"reason": "again"}, headers=headers
        ),
        200,
    )["data"]
    assert reversed_["status"] == "REVERSED"
    assert any(t["reverses_id"] for t in reversed_["result"]["transactions"])

    bulk = _valid(
        docs.BulkResponse,
        client.post(
            f"{BASE}/behavior/events/reverse",
            json={
                "events": [
                    {"id": first["id"], "reason": "fraud"},
                    {"id": str(uuid.uuid4()), "reason": "unknown"},
                ]
            },
            headers=headers,
        ),
        202,
    )["data"]
    assert [item["status"] for item in bulk] == ["ACCEPTED", "REJECTED"]

    _valid(
        docs.WalletResponse, client.get(f"{BASE}/customers/{customer}/wallet", headers=headers), 200
    )
    page = _valid(
        docs.TransactionsPage,
        client.get(f"{BASE}/customers/{customer}/transactions?limit=2", headers=headers),
        200,
    )
    assert page["next_cursor"] is not None

    reward_url = f"{ADMIN}/rewards/{uuid.uuid4()}"
    put = client.put(
        reward_url, json={"type": "GIFT_CARD", "name": "Card", "cost": 10}, headers=headers
    )
    _valid(docs.RewardResponse, put, 200)
    _valid(docs.RewardResponse, client.get(reward_url, headers=headers), 200)
    _valid(docs.RewardListResponse, client.get(f"{ADMIN}/rewards", headers=headers), 200)
    campaign_url = f"{ADMIN}/campaigns/{uuid.uuid4()}"
    put = client.put(campaign_url, json={"name": "Summer"}, headers=headers)
    _valid(docs.CampaignResponse, put, 200)
    _valid(docs.CampaignResponse, client.get(campaign_url, headers=headers), 200)
    tiers = [{"name": "GOLD", "min_points": 1000}, {"name": "SILVER", "min_points": 0}]
    _valid(docs.TiersResponse, client.put(f"{ADMIN}/tiers", json=tiers, headers=headers), 200)
    _valid(docs.TiersResponse, client.get(f"{ADMIN}/tiers", headers=headers), 200)
    settings = {"shortfall": "clamp", "reversal_window_days": 30}
    _valid(
        docs.BrandSettingsResponse,
        client.put(f"{ADMIN}/settings", json=settings, headers=headers),
        200,
    )
    _valid(docs.BrandSettingsResponse, client.get(f"{ADMIN}/settings", headers=headers), 200)
    _valid(docs.HealthResponse, client.get("/healthz"), 200)


def test_real_error_answers_match_the_envelope(
    client: TestClient, headers: dict[str, str], world: World
) -> None:
    events = f"{BASE}/behavior/events"
    pending = world.submit(uuid.uuid4(), accumulate=[10])
    answers = {
        401: client.get(f"{events}/{uuid.uuid4()}"),
        404: client.get(f"{events}/{uuid.uuid4()}", headers=headers),
        409: client.post(f"{events}/{pending}/reverse", json={"reason": "x"}, headers=headers),
        413: client.post(events, content=b"x" * (2 * 1024 * 1024), headers=headers),
        422: client.post(events, json={"customer_id": "nope"}, headers=headers),
    }
    for status, answer in answers.items():
        _valid(docs.ErrorResponse, answer, status)
