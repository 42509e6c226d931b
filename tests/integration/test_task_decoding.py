"""The worker's message decoding: a task body of the wrong shape (a malformed,
truncated, oversized or wrong-typed argument) becomes a dead letter and a FAILED
outcome; no exception leaves the task, so the worker goes on.

The task functions run eagerly in this process (`task.apply`), exactly as the worker
calls them after kombu has decoded the body; dead letters are committed rows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from tests.support import World
from worker.db import get_sessionmaker, unit_of_work
from worker.intake import request_reversal
from worker.models import DeadLetter, Event
from worker.tasks import MAX_KEPT_PAYLOAD, process_event, reverse_event, reverse_events

MB = 1024 * 1024
VALID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"

BAD_BODIES: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "non-UUID event id": (("not-a-uuid", "msg-1"), {}),
    "None event id": ((None, "msg-1"), {}),
    "1 MB event id": (("x" * MB, "msg-1"), {}),
    "list event id": (([VALID], "msg-1"), {}),
    "dict event id": (({"id": VALID}, "msg-1"), {}),
    "int event id": ((12345, "msg-1"), {}),
    "float event id": ((1.5, "msg-1"), {}),
    "bool event id": ((True, "msg-1"), {}),
    "NUL in event id": (("\x00" + VALID, "msg-1"), {}),
    "lone surrogate in event id": (("\ud800" + VALID, "msg-1"), {}),
    "1 MB list": ((["a"] * (MB // 4), "msg-1"), {}),
    "truncated: no message id": ((VALID,), {}),
    "truncated: no arguments": ((), {}),
    "one argument too many": ((VALID, "msg-1", "extra"), {}),
    "unknown keyword": ((VALID, "msg-1"), {"shortfall": "clamp"}),
    "keyword named task": ((), {"task": 1, "event_id": VALID, "message_id": "m"}),
    "None message id": ((VALID, None), {}),
    "int message id": ((VALID, 7), {}),
    "empty message id": ((VALID, ""), {}),
    "1 MB message id": ((VALID, "m" * MB), {}),
    "NUL in message id": ((VALID, "m\x00"), {}),
}


def _letters(task_id: str) -> list[DeadLetter]:
    with unit_of_work() as session:
        return list(session.scalars(select(DeadLetter).where(DeadLetter.task_id == task_id)))


@pytest.mark.parametrize("task", [process_event, reverse_event], ids=["process", "reverse"])
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_a_bad_task_body_is_dead_lettered_and_nothing_escapes(task: Any, case: str) -> None:
    args, kwargs = BAD_BODIES[case]
    task_id = str(uuid.uuid4())
    outcome = task.apply(args=args, kwargs=kwargs, task_id=task_id, throw=True).get()
    assert outcome == "FAILED"
    letters = _letters(task_id)
    assert len(letters) == 1, case
    letter = letters[0]
    assert letter.task_name == task.name
    assert letter.event_id is None
    assert letter.error and len(letter.error) <= 1000
    assert "\x00" not in letter.error
    kept = json.dumps(letter.payload)
    assert len(kept) <= MAX_KEPT_PAYLOAD + 200
    if _storable(args, kwargs):
        # A small body PostgreSQL can store is kept as it came, to be read or replayed.
        assert letter.payload == {"args": list(args), "kwargs": kwargs}
    else:
        assert letter.payload["unstorable"] is True
        assert letter.payload["repr"] and letter.payload["repr_length"] >= len(
            letter.payload["repr"]
        )


def _storable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    text = json.dumps([args, kwargs], ensure_ascii=False)
    surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    return len(text) < 60_000 and "\\u0000" not in text and not surrogate


def test_a_wrong_typed_message_id_for_a_real_event_changes_nothing() -> None:
    factory: Callable[[], Any] = get_sessionmaker()
    world = World.create(factory)
    customer = uuid.uuid4()
    event_id = world.submit(customer, accumulate=[10])
    message_id = world.message_id(event_id)
    for bad in (None, 7, [message_id], {"id": message_id}, message_id + "\x00"):
        task_id = str(uuid.uuid4())
        outcome = process_event.apply(args=(str(event_id), bad), task_id=task_id, throw=True).get()
        assert outcome == "FAILED"
        assert len(_letters(task_id)) == 1
    with unit_of_work() as session:
        event = session.get_one(Event, event_id)
        assert (event.status, event.attempts) == ("PENDING", 0)
    # The well-formed message still does its work afterwards.
    outcome = process_event.apply(
        args=(str(event_id), message_id), task_id=message_id, throw=True
    ).get()
    assert outcome == "RESOLVED"
    assert world.balance(customer) == 10
    world.check(customer)


def test_a_well_formed_message_for_a_missing_event_is_dead_lettered_with_its_body() -> None:
    task_id, missing = str(uuid.uuid4()), str(uuid.uuid4())
    outcome = reverse_event.apply(args=(missing, task_id), task_id=task_id, throw=True).get()
    assert outcome == "FAILED"
    (letter,) = _letters(task_id)
    assert letter.event_id == uuid.UUID(missing)
    assert letter.payload == {"args": [missing, task_id], "kwargs": {}}


BAD_BATCHES: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "no arguments": ((), {}),
    "ids not a list": (("msg-1", VALID), {}),
    "empty list": (("msg-1", []), {}),
    "1,001 ids": (("msg-1", [VALID] * 1001), {}),
    "a non-UUID id": (("msg-1", [VALID, "not-a-uuid"]), {}),
    "an int id": (("msg-1", [7]), {}),
    "None message id": ((None, [VALID]), {}),
    "NUL in message id": (("m\x00", [VALID]), {}),
    "one argument too many": (("msg-1", [VALID], "extra"), {}),
    "unknown keyword": (("msg-1", [VALID]), {"shortfall": "clamp"}),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_a_bad_batch_body_is_dead_lettered_and_nothing_escapes(case: str) -> None:
    args, kwargs = BAD_BATCHES[case]
    task_id = str(uuid.uuid4())
    outcome = reverse_events.apply(args=args, kwargs=kwargs, task_id=task_id, throw=True).get()
    assert outcome == "FAILED"
    (letter,) = _letters(task_id)
    assert letter.task_name == "reversals.reverse_events"
    assert letter.event_id is None


def test_a_batch_message_reverses_its_events_and_a_redelivery_does_nothing() -> None:
    factory: Callable[[], Any] = get_sessionmaker()
    world = World.create(factory)
    customer = uuid.uuid4()
    events = [world.event(customer, accumulate=[n]) for n in (5, 6)]
    batch = str(uuid.uuid4())
    with unit_of_work() as session:
        for event_id in events:
            request_reversal(session, world.brand_id, event_id, "refund", batch_message_id=batch)
    args = (batch, [str(e) for e in events])
    assert reverse_events.apply(args=args, task_id=batch, throw=True).get() == {"REVERSED": 2}
    assert reverse_events.apply(args=args, task_id=batch, throw=True).get() == {"IGNORED": 2}
    assert world.balance(customer) == 0
    assert not _letters(batch)
    world.check(customer)
