"""Revoking an API key (SPEC §4): the key gets no new token, and every token it
already got stops working: at once in the process that revoked it, and within
api_stub.auth.KEY_LIVE_TTL seconds in every other api process, which remember a
key found live for that long (docs/decisions.md)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api_stub import auth
from api_stub.app import create_app
from api_stub.auth import KeyNotFound, create_api_key, hash_key, revoke_api_key
from tests.support import World
from worker.cli import main
from worker.db import unit_of_work
from worker.models import ApiKey
from worker.settings import get_settings

BASE = "/api/storefront/v1"
ADMIN = "/api/admin/v1"


def _token(client: TestClient, api_key: str) -> dict[str, str]:
    answer = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": api_key})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['data']['access_token']}"}


def _key_row(factory: Callable[[], Any], api_key: str) -> ApiKey:
    with unit_of_work(factory) as session:
        return session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(api_key))).one()


def _assert_401(client: TestClient, headers: dict[str, str], event_id: uuid.UUID) -> None:
    for answer in (
        client.get(f"{BASE}/behavior/events/{event_id}", headers=headers),
        client.post(
            f"{BASE}/behavior/events/{event_id}/reverse", json={"reason": "x"}, headers=headers
        ),
        client.get(f"{ADMIN}/settings", headers=headers),
    ):
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("name_it_by", ["prefix", "id", "whole key"])
def test_a_revoked_key_gets_no_token_and_its_tokens_stop_at_once(
    client: TestClient, world: World, db_factory: Callable[[], Any], name_it_by: str
) -> None:
    customer = uuid.uuid4()
    event_id = world.event(customer, accumulate=[100])
    with unit_of_work(db_factory) as session:
        spare = create_api_key(session, world.brand_id)
    before = _token(client, world.api_key)
    assert client.get(f"{BASE}/behavior/events/{event_id}", headers=before).status_code == 200

    row = _key_row(db_factory, world.api_key)
    name = {"prefix": row.prefix, "id": str(row.id), "whole key": world.api_key}[name_it_by]
    with unit_of_work(db_factory) as session:
        revoked = revoke_api_key(session, world.brand_id, name)
        assert revoked.id == row.id and revoked.revoked_at is not None

    _assert_401(client, before, event_id)
    answer = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": world.api_key})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"
    # The brand's other key is untouched: only the named key was revoked.
    other = _token(client, spare)
    assert client.get(f"{BASE}/behavior/events/{event_id}", headers=other).status_code == 200
    assert world.get(event_id).status == "RESOLVED"
    world.check()


def test_a_key_revoked_elsewhere_stops_its_tokens_within_the_ttl(
    client: TestClient,
    world: World,
    db_factory: Callable[[], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A revocation this process did not make (the CLI, another api process) is seen
    once this process's memory of the key as live has lapsed: KEY_LIVE_TTL at most."""
    monkeypatch.setattr(auth, "KEY_LIVE_TTL", 0.5)
    auth.forget_live_keys()
    event_id = world.event(uuid.uuid4(), accumulate=[100])
    before = _token(client, world.api_key)
    assert client.get(f"{BASE}/behavior/events/{event_id}", headers=before).status_code == 200
    # Revoked behind this process's back: no revoke_api_key here, so nothing forgotten.
    with unit_of_work(db_factory) as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == hash_key(world.api_key))
            .values(revoked_at=func.now())
        )
    time.sleep(0.6)
    _assert_401(client, before, event_id)


def test_revoking_twice_keeps_the_first_revocation_time(
    world: World, db_factory: Callable[[], Any]
) -> None:
    row = _key_row(db_factory, world.api_key)
    with unit_of_work(db_factory) as session:
        first = revoke_api_key(session, world.brand_id, row.prefix).revoked_at
    with unit_of_work(db_factory) as session:
        again = revoke_api_key(session, world.brand_id, row.prefix).revoked_at
    assert first is not None and again == first


def test_a_brand_cannot_revoke_another_brands_key(
    client: TestClient, world: World, db_factory: Callable[[], Any]
) -> None:
    other = World.create(db_factory)
    row = _key_row(db_factory, other.api_key)
    for name in (row.prefix, str(row.id), other.api_key):
        with pytest.raises(KeyNotFound), unit_of_work(db_factory) as session:
            revoke_api_key(session, world.brand_id, name)
    assert _key_row(db_factory, other.api_key).revoked_at is None
    _token(client, other.api_key)


def test_an_ambiguous_or_unknown_prefix_revokes_nothing(
    world: World, db_factory: Callable[[], Any]
) -> None:
    with unit_of_work(db_factory) as session:
        for _ in range(2):
            session.add(
                ApiKey(brand_id=world.brand_id, key_hash=uuid.uuid4().hex * 2, prefix="rk_twins")
            )
    for name in ("rk_twins", "rk_nokey", str(uuid.uuid4()), "rk_" + "x" * 43):
        with pytest.raises(KeyNotFound), unit_of_work(db_factory) as session:
            revoke_api_key(session, None, name)
    with unit_of_work(db_factory) as session:
        keys = session.scalars(select(ApiKey).where(ApiKey.brand_id == world.brand_id)).all()
        assert len(keys) == 3 and all(k.revoked_at is None for k in keys)


def test_the_cli_adds_and_revokes_keys() -> None:
    """`reversals brand create | add-key | revoke-key` on committed data, as operators run them."""
    runner = CliRunner()
    created = runner.invoke(main, ["brand", "create", "cli revocation", "--json"])
    assert created.exit_code == 0, created.output
    brand = json.loads(created.output)
    added = runner.invoke(main, ["brand", "add-key", brand["brand_id"], "--json"])
    assert added.exit_code == 0, added.output
    extra = json.loads(added.output)
    assert set(extra) == {"brand_id", "key_id", "prefix", "api_key"}
    assert extra["brand_id"] == brand["brand_id"]
    assert extra["api_key"].startswith(extra["prefix"]) and extra["api_key"] != brand["api_key"]

    with TestClient(create_app(get_settings())) as client:
        first, second = _token(client, brand["api_key"]), _token(client, extra["api_key"])
        for headers in (first, second):
            assert client.get(f"{ADMIN}/settings", headers=headers).status_code == 200

        revoked = runner.invoke(main, ["brand", "revoke-key", extra["prefix"]])
        assert revoked.exit_code == 0, revoked.output
        assert extra["key_id"] in revoked.output and "revoked" in revoked.output

        assert client.get(f"{ADMIN}/settings", headers=second).status_code == 401
        answer = client.get(f"{BASE}/auth/authorize", headers={"x-api-key": extra["api_key"]})
        assert answer.status_code == 401
        assert client.get(f"{ADMIN}/settings", headers=first).status_code == 200

    unknown = runner.invoke(main, ["brand", "revoke-key", "rk_nokey"])
    assert unknown.exit_code != 0 and "no API key matches" in unknown.output
    missing = runner.invoke(main, ["brand", "add-key", str(uuid.uuid4())])
    assert missing.exit_code != 0 and "no brand" in missing.output
    scoped = runner.invoke(
        main, ["brand", "revoke-key", brand["api_key"][:8], "--brand", str(uuid.uuid4())]
    )
    assert scoped.exit_code != 0
