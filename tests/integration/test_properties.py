"""Random histories: the SPEC §3 invariants after every step; reversing every event of
the history (under `negative`) returns every line to where it was before it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tests.support import World
from worker import processing
from worker.db import unit_of_work
from worker.intake import IntakeError, fulfil_event, request_reversal
from worker.ledger.expiry import expire_wallet
from worker.models import Event, Line
from worker.processing import handle_batch

expiry = st.sampled_from(["none", "future", "soon"])
policy = st.sampled_from(["negative", "clamp", "fail"])
step = st.one_of(
    st.tuples(st.just("earn"), st.integers(1, 100), expiry),
    st.tuples(st.just("spend"), st.integers(1, 1200)),
    st.tuples(st.just("reserve"), st.integers(0, 50), st.integers(1, 80)),
    st.tuples(st.just("fulfil"), st.integers(0, 50)),
    st.tuples(st.just("reverse"), st.integers(0, 50), policy),
    st.tuples(st.just("expire")),
    st.tuples(st.just("gift")),
)


def _expiry(kind: str) -> datetime | None:
    now = datetime.now(UTC)
    return {"none": None, "future": now + timedelta(days=365), "soon": now + timedelta(hours=1)}[
        kind
    ]


def _run(world: World, customer: uuid.UUID, op: tuple[Any, ...], events: list[uuid.UUID]) -> bool:
    """Apply one step; True if it forgave points (a clamp that reported a shortfall)."""
    kind = op[0]
    if kind == "earn":
        events.append(world.event(customer, accumulate=[(op[1], _expiry(op[2]))]))
    elif kind == "spend":
        events.append(world.event(customer, redeem=[op[1]]))
    elif kind == "reserve":
        accumulate = [op[1]] if op[1] else []
        events.append(world.event(customer, accumulate=accumulate, redeem=[op[2]], fulfilled=False))
    elif kind == "gift":
        events.append(world.event(customer, accumulate=[5], gift_cards=1))
    elif kind == "fulfil" and events:
        target = events[op[1] % len(events)]
        try:
            with unit_of_work(world.factory) as session:
                fulfil_event(session, world.brand_id, target)
        except IntakeError:
            pass
    elif kind == "reverse" and events:
        target = events[op[1] % len(events)]
        try:
            outcome = world.reverse(target, op[2])
        except IntakeError:
            return False
        shortfall = world.get(target).reversal_shortfall
        return outcome == "REVERSED" and op[2] == "clamp" and shortfall is not None
    elif kind == "expire":
        with unit_of_work(world.factory) as session:
            session.execute(
                update(Line)
                .where(
                    Line.customer_id == customer,
                    Line.expiration_date < datetime.now(UTC) + timedelta(hours=2),
                )
                .values(expiration_date=datetime.now(UTC) - timedelta(seconds=1))
            )
            expire_wallet(session, customer, world.reward_id, datetime.now(UTC))
    return False


def _not_one_by_one(*_: Any, **__: Any) -> str:
    raise AssertionError("the batch fell back to one transaction per event")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=st.lists(step, min_size=1, max_size=12), data=st.data())
def test_random_histories_keep_the_invariants_and_undo_to_zero(
    db_factory: Callable[[], Session],
    monkeypatch: pytest.MonkeyPatch,
    history: list[tuple[Any, ...]],
    data: st.DataObject,
) -> None:
    world = World.create(db_factory)
    customer = uuid.uuid4()
    # A line from before the history: it must end exactly as it started.
    base = world.event(customer, accumulate=[1000])
    events: list[uuid.UUID] = []
    forgiven = False
    for op in history:
        forgiven |= _run(world, customer, op, events)
        world.check(customer)

    # Reverse everything still standing, in any order, under `negative`: one by one,
    # or together as one bulk batch (one transaction, read ahead together).
    standing = [
        event_id
        for event_id in data.draw(st.permutations(events))
        if world.get(event_id).status == "RESOLVED"
        or (
            world.get(event_id).status == "FAILED"
            and world.get(event_id).reversal_status == "FAILED"
        )
    ]
    if data.draw(st.booleans(), label="as one bulk batch"):
        batch = str(uuid.uuid4())
        with unit_of_work(world.factory) as session:
            for event_id in standing:
                answer = request_reversal(
                    session,
                    world.brand_id,
                    event_id,
                    "refund",
                    shortfall="negative",
                    batch_message_id=batch,
                )
                assert answer.status_code == 202
        with monkeypatch.context() as patched:
            # Nothing in it is refused: the batch must not fall back to one by one.
            patched.setattr(processing, "apply", _not_one_by_one)
            outcomes = handle_batch(standing, batch, world.factory)
        assert set(outcomes) <= {"REVERSED", "CANCELLED"}, outcomes
        assert sum(outcomes.values()) == len(standing)
        world.check(customer)
    else:
        for event_id in standing:
            assert world.reverse(event_id, "negative") in ("REVERSED", "CANCELLED")
            world.check(customer)
    if forgiven:
        return  # a clamp forgave points on purpose: the books are right, not back to zero
    assert world.balance(customer) == 1000
    with world.factory() as session:
        lines = session.scalars(select(Line).where(Line.customer_id == customer)).all()
        left = sorted((line.event_id == base, line.remaining, line.reserved) for line in lines)
        assert left[-1] == (True, 1000, 0), left
        assert all(rest == (False, 0, 0) for rest in left[:-1]), left
        statuses = set(session.scalars(select(Event.status).where(Event.id.in_(events))))
    assert statuses <= {"REVERSED", "CANCELLED", "FAILED", "EXPIRED"}
