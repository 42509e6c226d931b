"""The bench's wait for a worker to drain (bench.measure.done_count): cheap while events
are in flight, exact once none is, and never done while one of the ids is not."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from bench.measure import done_count, in_flight_count, terminal_count
from tests.support import World
from worker.processing import handle_message


def test_the_wait_counts_in_flight_events_then_the_ids_themselves(world: World, db: Any) -> None:
    conn = db.connection()
    assert in_flight_count(conn) == 0  # the measure's premise: nothing else in flight

    def connect() -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext(conn)

    a, b, never = (world.event(uuid.uuid4(), accumulate=[100]) for _ in range(3))
    assert in_flight_count(conn) == 0  # recorded and resolved
    for event_id in (a, b):
        assert world.request_reversal(event_id) == 202
    done = done_count(connect, [a, b])
    assert in_flight_count(conn) == 2
    assert done() == 0

    # Alone (take=0): a delivery would otherwise take b along.
    assert handle_message(a, world.message_id(a), world.factory, take=0) == "REVERSED"
    assert done() == 1
    assert world.deliver(b) == "REVERSED"
    assert in_flight_count(conn) == 0
    assert done() == 2 == terminal_count(conn, [a, b])

    # Nothing in flight, yet an id that was never accepted is not done: the wait
    # goes on (and times out) rather than ending early.
    assert done_count(connect, [a, b, never])() == 2
    world.check()
