"""How many statements a reversal costs (issue 5's profile: each is a round trip and
most of the worker's time). Counts, not timings: a read that slips back into a loop,
or an object the session lets go of and reads again, shows up here."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from tests.support import World
from worker.db import unit_of_work
from worker.intake import request_reversal
from worker.processing import handle_batch, handle_message

# The test's sessions run inside savepoints of one rolled-back transaction.
_SAVEPOINTS = re.compile(r"^(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)\b")


@contextmanager
def statements(engine: Any, whole: bool = False) -> Iterator[list[str]]:
    """The statements run meanwhile: their first three words, or `whole` texts."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        statement: str = args[2]
        if not _SAVEPOINTS.match(statement):
            seen.append(statement if whole else " ".join(statement.split()[:3]))

    listener: Callable[..., None] = record
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_a_reversal_reads_each_table_once_and_writes_each_table_once(
    world: World, engine: Any
) -> None:
    customer = uuid.uuid4()
    world.event(customer, accumulate=[300, 200])
    spent = world.event(customer, accumulate=[120, 30], redeem=[250], gift_cards=1)
    assert world.request_reversal(spent) == 202
    message_id = world.message_id(spent)

    with statements(engine) as seen:
        assert handle_message(spent, message_id, world.factory) == "REVERSED"

    verbs = Counter(" ".join(s.split()[:2]) for s in seen if not s.startswith("SELECT"))
    # The claim, and the brand's other waiting reversals taken along (none here);
    # then, at the work's commit, the five transactions in one statement, the gift
    # card, the three lines in one statement, the wallet and the event.
    assert verbs == {
        "UPDATE events": 2,
        "WITH oldest": 1,
        "UPDATE gift_cards": 1,
        "UPDATE lines": 1,
        "INSERT INTO": 1,
        "UPDATE wallets": 1,
    }, seen
    # One query each: the event with its brand, the wallets with their rewards and
    # the customer, the customer's lines in debt, the lines, the allocations, the
    # gift cards, the settlements of the lines given back. Nothing is read twice.
    reads = [s for s in seen if s.startswith("SELECT")]
    assert len(reads) == 7, seen
    assert len(seen) == 14, seen
    world.check(customer)


def test_a_reversal_request_is_one_read_and_one_write(world: World, engine: Any) -> None:
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[100])
    with statements(engine) as seen:
        assert world.request_reversal(earned) == 202
    # The event, locked, with its brand; then its UPDATE at the commit.
    assert [s.split()[0] for s in seen] == ["SELECT", "UPDATE"], seen
    world.check(customer)


# Reversals done together (a bulk batch, or a delivery's with those it took along),
# once for all of them, none per event: the events with their brands, every
# customer's wallets, their lines in debt, the events' lines, the allocations, the
# gift cards, the settlements; and at the commit the transactions in one statement
# (worker.ledger.journal), then one statement per table updated, in table order
# (worker.ledger.together: events, gift cards, lines, wallets).
BATCH_WORK = (
    "SELECT events.id,",
    "SELECT wallets.customer_id,",
    "SELECT lines.id,",
    "SELECT lines.id,",
    "SELECT allocations.id,",
    "SELECT gift_cards.id,",
    "SELECT settlements.id,",
    "INSERT INTO",
    "UPDATE events",
    "UPDATE gift_cards",
    "UPDATE lines",
    "UPDATE wallets",
)


def test_a_bulk_batch_reads_each_table_once_for_all_of_its_events(
    world: World, engine: Any
) -> None:
    customers = [uuid.uuid4() for _ in range(5)]
    batch = str(uuid.uuid4())
    spent = []
    for customer in customers:
        world.event(customer, accumulate=[300, 200])
        spent.append(world.event(customer, accumulate=[120, 30], redeem=[250], gift_cards=1))
    # Two events of one customer in the same batch.
    spent.append(world.event(customers[0], accumulate=[40]))
    with unit_of_work(world.factory) as session:
        for event_id in spent:
            request_reversal(session, world.brand_id, event_id, "refund", batch_message_id=batch)

    with statements(engine) as seen:
        assert handle_batch(spent, batch, world.factory) == {"REVERSED": 6}

    # The claim and the take of waiting reversals (the batch has room for more, and
    # finds none), then the batch's work: the same 13 statements as for one event.
    claim_and_take = ["UPDATE events", "WITH oldest"]
    assert [" ".join(s.split()[:2]) for s in seen] == [*claim_and_take, *BATCH_WORK], seen
    for customer in customers:
        world.check(customer)


def test_a_batch_runs_the_same_statement_texts_whatever_its_size(world: World, engine: Any) -> None:
    # Ids travel as one array each (worker.models.one_of), not one placeholder per
    # id: a text that never changes is rendered, converted and planned once.
    def batch_of(n: int) -> list[str]:
        batch = str(uuid.uuid4())
        spent = []
        for _ in range(n):
            customer = uuid.uuid4()
            world.event(customer, accumulate=[300, 200])
            spent.append(world.event(customer, accumulate=[120, 30], redeem=[250], gift_cards=1))
        with unit_of_work(world.factory) as session:
            for event_id in spent:
                request_reversal(
                    session, world.brand_id, event_id, "refund", batch_message_id=batch
                )
        with statements(engine, whole=True) as seen:
            assert handle_batch(spent, batch, world.factory) == {"REVERSED": n}
        return seen

    two, five = batch_of(2), batch_of(5)
    assert len(two) == len(BATCH_WORK) + 2
    assert two == five
    world.check()
