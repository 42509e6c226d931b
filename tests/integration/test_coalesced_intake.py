"""Single reversal requests that arrive together are decided in one transaction
(api_stub.routes.events.decide_singles), each answered as if it had come alone."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from api_stub.app import create_app
from api_stub.routes import events as routes
from tests.support import World
from worker.db import unit_of_work
from worker.intake import IntakeError, ReversalRequest, request_reversal, request_reversals
from worker.ledger.views import event_view, event_views
from worker.models import Event
from worker.processing import deliver, handle_batch
from worker.settings import get_settings

BASE = "/api/storefront/v1/behavior/events"
Sent = dict[str, list[Any]]


def _published(monkeypatch: pytest.MonkeyPatch) -> Sent:
    sent: Sent = {"single": [], "batch": []}
    monkeypatch.setattr(
        "worker.intake.publish", lambda task, event_id, mid: sent["single"].append((event_id, mid))
    )
    monkeypatch.setattr(
        "worker.intake.publish_batch", lambda mid, ids: sent["batch"].append((mid, ids))
    )
    return sent


def _state(world: World, event_id: uuid.UUID) -> tuple[str, str | None, str]:
    event = world.get(event_id)
    return event.status, event.reversal_status, event.queue_message_id


def test_requests_decided_together_answer_each_as_alone_and_a_refusal_changes_nothing(
    db_factory: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = World.create(db_factory), World.create(db_factory)
    ca, cb = uuid.uuid4(), uuid.uuid4()
    a.event(ca, accumulate=[500])
    first, second, reversed_, in_flight = (
        a.event(ca, accumulate=[40], redeem=[30], gift_cards=1) for _ in range(4)
    )
    theirs, untouched = (b.event(cb, accumulate=[25]) for _ in range(2))
    assert a.reverse(reversed_) == "REVERSED"
    assert a.request_reversal(in_flight) == 202
    in_flight_message = a.message_id(in_flight)
    untouched_before = _state(b, untouched)
    sent = _published(monkeypatch)
    missing = uuid.uuid4()
    asked = [
        ReversalRequest(a.brand_id, first, "refund"),
        ReversalRequest(a.brand_id, second, "refund", "fail"),
        ReversalRequest(a.brand_id, missing, "refund"),
        ReversalRequest(a.brand_id, untouched, "refund"),  # another brand's: not found
        ReversalRequest(b.brand_id, theirs, "fraud"),
        ReversalRequest(a.brand_id, reversed_, "refund"),
        ReversalRequest(a.brand_id, in_flight, "refund"),
        ReversalRequest(a.brand_id, first, "again"),  # the same event twice
    ]
    answers = routes.decide_singles(db_factory, 50, asked)

    statuses = [a if isinstance(a, Exception) else a[0] for a in answers]
    assert statuses[:2] == [202, 202]
    for refused, event_id in ((statuses[2], missing), (statuses[3], untouched)):
        assert isinstance(refused, IntakeError)
        assert (refused.status, refused.code) == (404, "not_found")
        assert str(event_id) in refused.message
    assert statuses[4:] == [202, 200, 202, 202]
    assert _state(b, untouched) == untouched_before
    # Each view is the event as it now reads, alone.
    with unit_of_work(db_factory) as session:
        for request, answer in zip(asked, answers, strict=True):
            if not isinstance(answer, Exception):
                now = event_view(session, session.get_one(Event, request.event_id))
                assert json.loads(answer[1]) == now, request
    views = {
        r.event_id: json.loads(answer[1])
        for r, answer in zip(asked, answers, strict=True)
        if not isinstance(answer, Exception)
    }
    assert views[first]["status"] == "PENDING" and views[first]["reversal"]["reason"] == "refund"
    assert a.get(second).reversal_policy == "fail"
    assert views[theirs]["reversal"]["reason"] == "fraud"
    assert views[in_flight]["queue_message_id"] == in_flight_message  # nothing new enqueued
    # One message per brand: the two of brand a together, brand b's alone as a single's.
    assert sent["batch"] == [(views[first]["queue_message_id"], [first, second])]
    assert views[second]["queue_message_id"] == views[first]["queue_message_id"]
    assert sent["single"] == [(theirs, views[theirs]["queue_message_id"])]
    assert views[first]["queue_message_id"] != in_flight_message

    message, ids = sent["batch"][0]
    assert handle_batch(ids, message, db_factory, take=0) == {"REVERSED": 2}
    assert deliver(theirs, sent["single"][0][1], db_factory).outcomes == {theirs: "REVERSED"}
    a.check(ca)
    b.check(cb)


def test_when_the_transaction_of_all_fails_each_request_is_decided_alone(
    world: World, db_factory: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = uuid.uuid4()
    fine, other, doomed = (world.event(customer, accumulate=[10]) for _ in range(3))
    sent = _published(monkeypatch)

    def together_fails(session: Any, requests: list[ReversalRequest], *args: Any, **kw: Any) -> Any:
        if len(requests) > 1 or requests[0].event_id == doomed:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return request_reversals(session, requests, *args, **kw)

    monkeypatch.setattr(routes, "request_reversals", together_fails)
    asked = [ReversalRequest(world.brand_id, e, "refund") for e in (fine, doomed, other)]
    answers = routes.decide_singles(db_factory, 50, asked)

    assert [a[0] for a in (answers[0], answers[2])] == [202, 202]  # type: ignore[index]
    assert isinstance(answers[1], OperationalError)  # its own failure, and only its own
    assert _state(world, doomed)[:2] == ("RESOLVED", None)
    # Each decided alone, so each travels alone.
    assert sorted(e for e, _ in sent["single"]) == sorted([fine, other])
    assert sent["batch"] == []
    world.check(customer)


def test_the_views_of_several_events_read_together_are_each_events_own(
    db_factory: Callable[[], Any],
) -> None:
    a, b = World.create(db_factory), World.create(db_factory)
    ca, cb = uuid.uuid4(), uuid.uuid4()
    mixed = [
        a.event(ca, accumulate=[500, 20]),
        b.event(cb, accumulate=[7]),
        a.event(ca, accumulate=[40], redeem=[30], gift_cards=2),
        b.event(cb, redeem=[5]),
    ]
    assert a.reverse(mixed[2]) == "REVERSED"
    with unit_of_work(db_factory) as session:
        loaded = [session.get_one(Event, e) for e in mixed]
        together = event_views(session, [*loaded, loaded[0]])
        alone = [event_view(session, event) for event in loaded]
        assert event_views(session, []) == []
    assert together == [*alone, alone[0]]
    assert [v["id"] for v in together] == [str(e) for e in [*mixed, mixed[0]]]
    assert len(alone[2]["result"]["gift_card"]) == 2
    assert {t["type"] for t in alone[2]["result"]["transactions"]} >= {"REVERSAL"}
    a.check(ca)
    b.check(cb)


def test_concurrent_single_requests_share_messages_and_are_each_reversed_once(
    world: World, db_factory: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = uuid.uuid4()
    world.event(customer, accumulate=[1000])
    events = [world.event(customer, accumulate=[10], redeem=[5]) for _ in range(12)]
    sent = _published(monkeypatch)
    app = create_app(get_settings(), session_factory=db_factory)

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            token = (
                await http.get(
                    "/api/storefront/v1/auth/authorize", headers={"x-api-key": world.api_key}
                )
            ).json()["data"]["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            # The key is found live once, before the burst (its check has its own session).
            assert (await http.get(f"{BASE}/{events[0]}", headers=headers)).status_code == 200
            return list(
                await asyncio.gather(
                    *(
                        http.post(f"{BASE}/{e}/reverse", json={"reason": "refund"}, headers=headers)
                        for e in events
                    )
                )
            )

    answers = asyncio.run(main())
    assert [r.status_code for r in answers] == [202] * len(events)
    bodies = [r.json()["data"] for r in answers]
    assert [b["id"] for b in bodies] == [str(e) for e in events]
    assert {b["status"] for b in bodies} == {"PENDING"}
    # Fewer messages than requests, and every event in exactly one of them.
    carried = [e for _, ids in sent["batch"] for e in ids] + [e for e, _ in sent["single"]]
    assert sorted(carried) == sorted(events)
    assert len(sent["batch"]) + len(sent["single"]) < len(events)
    for message, ids in sent["batch"]:
        assert {b["queue_message_id"] for b in bodies if uuid.UUID(b["id"]) in ids} == {message}
        assert handle_batch(ids, message, db_factory, take=0) == {"REVERSED": len(ids)}
    for event_id, message in sent["single"]:
        assert deliver(event_id, message, db_factory, take=0).outcomes == {event_id: "REVERSED"}
    assert world.balance(customer) == 1000
    world.check(customer)


_WRITTEN = (
    "status",
    "reversal_reason",
    "reversal_status",
    "reversal_attempts",
    "reversal_last_error",
    "reversal_dead_lettered",
    "reversal_policy",
    "reversal_shortfall",
)


def test_requests_decided_together_write_what_a_request_alone_writes(
    db_factory: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # request_reversals writes rows with one UPDATE; request_reversal sets an Event's
    # attributes. Twin events, one decided each way, must end alike, or be refused alike.
    world = World.create(db_factory, {"reversal_window_days": 30})

    def fresh() -> uuid.UUID:
        return world.event(uuid.uuid4(), accumulate=[100])

    def failed() -> uuid.UUID:
        customer = uuid.uuid4()
        earned = world.event(customer, accumulate=[100])
        world.event(customer, redeem=[80])
        assert world.reverse(earned, "fail") == "FAILED"  # the points were spent
        return earned

    def too_old() -> uuid.UUID:
        event_id = fresh()
        with unit_of_work(db_factory) as session:
            session.get_one(Event, event_id).issued_at -= timedelta(days=31)
        return event_id

    def pending() -> uuid.UUID:
        return world.submit(uuid.uuid4(), accumulate=[10])

    cases = [
        (fresh, None),
        (fresh, "clamp"),
        (failed, "negative"),
        (too_old, None),
        (pending, None),
    ]
    twins = [(make(), make(), policy) for make, policy in cases]
    assert world.get(twins[2][0]).reversal_last_error  # what a new request must clear
    _published(monkeypatch)

    def alone(event_id: uuid.UUID, policy: str | None) -> int | tuple[str, str]:
        try:
            with unit_of_work(db_factory) as session:
                return request_reversal(
                    session, world.brand_id, event_id, "refund", shortfall=policy
                ).status_code
        except IntakeError as exc:
            return exc.code, exc.message

    by_one = [alone(event_id, policy) for event_id, _, policy in twins]
    with unit_of_work(db_factory) as session:
        together = request_reversals(
            session,
            [ReversalRequest(world.brand_id, twin, "refund", p) for _, twin, p in twins],
            50,
        )
    by_all = [
        (a.code, a.message) if isinstance(a, IntakeError) else a.status_code for a in together
    ]
    assert by_one == by_all == [202, 202, 202, by_one[3], by_one[4]]
    assert by_one[3][0] == "reversal_window_passed"  # type: ignore[index]
    assert by_one[4][0] == "not_reversible"  # type: ignore[index]
    for first, second, policy in twins:
        one, other = world.get(first), world.get(second)
        assert [getattr(one, c) for c in _WRITTEN] == [getattr(other, c) for c in _WRITTEN]
        assert (one.reversal_requested_at is None) == (other.reversal_requested_at is None)
        if one.reversal_requested_at is not None and one.status == "PENDING":
            assert other.reversal_policy == policy and other.reversal_last_error is None
            assert other.queue_message_id != one.queue_message_id
    world.check()
