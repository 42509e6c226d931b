"""The bench's intake floor (bench.floor): the service's own api with one route that
does all an intake does except its database work. Its figure is only a floor if the
route passes the same checks and publishes the same message, and writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api_stub.app import create_app
from bench import floor
from tests.support import World
from worker.metrics import REVERSE_TASK
from worker.models import Event
from worker.settings import get_settings


@pytest.fixture()
def floor_client(db_factory: Callable[[], Any]) -> Iterator[TestClient]:
    app = floor.install(create_app(get_settings(), session_factory=db_factory))
    with TestClient(app) as client:
        yield client


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, uuid.UUID, str]]:
    calls: list[tuple[str, uuid.UUID, str]] = []
    monkeypatch.setattr(floor, "publish", lambda *args: calls.append(args))
    return calls


def _events(world: World) -> int:
    with world.factory() as session:
        return int(session.scalar(select(func.count()).select_from(Event)) or 0)


def test_the_floor_publishes_the_reversal_message_and_writes_nothing(
    floor_client: TestClient,
    world: World,
    headers: dict[str, str],
    sent: list[tuple[str, uuid.UUID, str]],
) -> None:
    # `headers` carries a token of the world's brand, from the service's own app.
    before = _events(world)
    event_id = uuid.uuid4()
    answer = floor_client.post(floor.path(event_id), json={"reason": "refund"}, headers=headers)
    assert answer.status_code == 202, answer.text
    data = answer.json()["data"]
    assert data["id"] == str(event_id)
    assert sent == [(REVERSE_TASK, event_id, data["queue_message_id"])]
    assert _events(world) == before


@pytest.mark.parametrize(
    "case",
    [
        ({}, {"reason": "refund"}, 401),  # no token: the intake's authentication
        ({"Authorization": "Bearer not-a-token"}, {"reason": "refund"}, 401),
        (None, {"reason": ""}, 422),  # a valid token (None), the intake's body schema
    ],
)
def test_the_floor_refuses_what_the_intake_refuses_and_publishes_nothing(
    floor_client: TestClient,
    headers: dict[str, str],
    sent: list[tuple[str, uuid.UUID, str]],
    case: tuple[dict[str, str] | None, dict[str, str], int],
) -> None:
    given, body, status = case
    answer = floor_client.post(
        floor.path(uuid.uuid4()), json=body, headers=headers if given is None else given
    )
    assert answer.status_code == status, answer.text
    assert sent == []
