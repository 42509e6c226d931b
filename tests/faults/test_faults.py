"""SPEC §7 under faults, with real `celery worker` processes that the tests kill.

Each test ends with the SPEC §3 invariants and exactly-once: one set of REVERSAL
transactions per reversed event (also a unique constraint), whatever happened.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.messaging import Producer
from sqlalchemy import select, text

from tests.faults.harness import (
    check_ledger,
    committed_world,
    deliveries,
    reversal_count,
    start_worker,
    status,
    wait_status,
)
from tests.support import World
from worker.db import unit_of_work
from worker.intake import request_reversal
from worker.models import DeadLetter, Event, Line
from worker.procs import stop_group, wait_until
from worker.publish import publish, publish_batch
from worker.settings import get_settings
from worker.sweeper import sweep

pytestmark = pytest.mark.e2e
SOONER, LATER = datetime(2030, 1, 31, tzinfo=UTC), datetime(2030, 6, 30, tzinfo=UTC)
BIN = Path(sys.executable).parent


def _purchase(world: World) -> tuple[uuid.UUID, uuid.UUID]:
    """A customer with history and a purchase that earned on 2 lines and redeemed."""
    customer = uuid.uuid4()
    world.event(customer, accumulate=[(300, LATER), (200, SOONER)])
    purchase = world.event(customer, accumulate=[120, 30], redeem=[250])
    assert world.get(purchase).status == "RESOLVED"
    return customer, purchase


@pytest.fixture()
def fault_dir(tmp_path: Path) -> Path:
    return tmp_path


def test_child_killed_after_commit_before_ack_is_reversed_once(fault_dir: Path) -> None:
    world = committed_world()
    customer, purchase = _purchase(world)
    worker = start_worker(
        fault_dir,
        "killed-child",
        {
            "FAULT_EVENT": str(purchase),
            "FAULT_DIR": str(fault_dir),
            "FAULT_KILL_AFTER_COMMIT": "1",
        },
    )
    try:
        world.request_reversal(purchase)
        wait_status(purchase, "REVERSED")
        # The child died after the commit; the unacked message comes back and is ignored.
        wait_until(lambda: deliveries(fault_dir) >= 2, 60, "the redelivery")
        assert (fault_dir / "killed").exists()
    finally:
        stop_group(worker)
    assert world.get(purchase).reversal_attempts == 1
    assert reversal_count(purchase) == 4
    assert world.balance(customer) == 500
    check_ledger(customer)


def test_child_killed_in_the_middle_of_a_bulk_batch_reverses_each_event_once(
    fault_dir: Path,
) -> None:
    world = committed_world()
    purchases = [_purchase(world) for _ in range(3)]
    middle = purchases[1][1]
    worker = start_worker(
        fault_dir,
        "killed-mid-batch",
        {"FAULT_EVENT": str(middle), "FAULT_DIR": str(fault_dir), "FAULT_KILL_MID_BATCH": "1"},
    )
    batch = str(uuid.uuid4())
    try:
        with unit_of_work() as session:
            for _, purchase in purchases:
                request_reversal(
                    session, world.brand_id, purchase, "refund", batch_message_id=batch
                )
        publish_batch(batch, [purchase for _, purchase in purchases])
        for _, purchase in purchases:
            wait_status(purchase, "REVERSED")
        # The child died in the batch's transaction, the middle event's reversal
        # written but not committed; the message came back whole.
        wait_until(lambda: deliveries(fault_dir) >= 2, 60, "the redelivery")
        assert (fault_dir / "killed").exists()
    finally:
        stop_group(worker)
    # Claimed together twice: nothing of the first delivery's work was kept, and
    # the redelivery did all three.
    assert [world.get(purchase).reversal_attempts for _, purchase in purchases] == [2, 2, 2]
    for customer, purchase in purchases:
        assert reversal_count(purchase) == 4
        assert world.balance(customer) == 500
        check_ledger(customer)


def test_main_process_killed_mid_task_is_finished_by_the_sweeper(fault_dir: Path) -> None:
    world = committed_world()
    customer, purchase = _purchase(world)
    env = {"FAULT_EVENT": str(purchase), "FAULT_DIR": str(fault_dir), "FAULT_SLOW_SECONDS": "5"}
    first = start_worker(fault_dir, "doomed", env)
    try:
        world.request_reversal(purchase)
        wait_until(lambda: deliveries(fault_dir) >= 1, 60, "the task to start")
    finally:
        stop_group(first, signal.SIGKILL)  # the whole worker, main process and child
    assert status(purchase) in ("PENDING", "PROCESSING")  # in flight, its message unacked
    second = start_worker(fault_dir, "rescuer", env)
    try:
        time.sleep(get_settings().pending_lease + 0.5)
        assert sweep(get_settings().pending_lease) >= 1
        wait_status(purchase, "REVERSED")
    finally:
        stop_group(second)
    assert reversal_count(purchase) == 4
    assert world.balance(customer) == 500
    check_ledger(customer)


def test_a_message_deleted_from_redis_is_published_again(fault_dir: Path) -> None:
    world = committed_world()
    customer, purchase = _purchase(world)
    world.request_reversal(purchase)
    broker = redis.Redis.from_url(get_settings().broker_url)
    assert broker.delete(get_settings().queue) == 1  # the message is gone
    worker = start_worker(fault_dir, "after-loss")
    try:
        time.sleep(2)
        assert status(purchase) == "PENDING"
        time.sleep(get_settings().pending_lease)
        assert sweep(get_settings().pending_lease) >= 1
        wait_status(purchase, "REVERSED")
    finally:
        stop_group(worker)
    assert reversal_count(purchase) == 4
    check_ledger(customer)


def test_the_same_message_published_twice_to_two_workers_reverses_once(fault_dir: Path) -> None:
    world = committed_world()
    customer, purchase = _purchase(world)
    env = {"FAULT_EVENT": str(purchase), "FAULT_DIR": str(fault_dir), "FAULT_SLOW_SECONDS": "1"}
    workers = [start_worker(fault_dir, f"twin{i}", env) for i in range(2)]
    try:
        time.sleep(3)  # both consuming
        world.request_reversal(purchase)
        message = world.message_id(purchase)
        publish("reversals.reverse_event", purchase, message)
        publish("reversals.reverse_event", purchase, message)
        wait_status(purchase, "REVERSED")
        wait_until(lambda: deliveries(fault_dir) >= 3, 60, "all three deliveries")
    finally:
        for worker in workers:
            stop_group(worker)
    assert reversal_count(purchase) == 4
    assert world.balance(customer) == 500
    check_ledger(customer)


def test_a_permanent_error_fails_at_once_with_a_dead_letter(fault_dir: Path) -> None:
    world = committed_world()
    _customer, purchase = _purchase(world)
    with unit_of_work() as session:  # an inconsistent ledger: the line claims it was reversed
        line = session.scalars(select(Line).where(Line.event_id == purchase)).first()
        assert line is not None
        line.state = "REVERSED"
    env = {"FAULT_EVENT": str(purchase), "FAULT_DIR": str(fault_dir)}
    worker = start_worker(fault_dir, "permanent", env)
    try:
        world.request_reversal(purchase)
        wait_status(purchase, "FAILED")
        time.sleep(1)
    finally:
        stop_group(worker)
    event = world.get(purchase)
    assert event.reversal_status == "FAILED" and event.reversal_dead_lettered
    assert deliveries(fault_dir) == 1  # no retry loop
    assert reversal_count(purchase) == 0
    with unit_of_work() as session:
        letters = session.scalars(select(DeadLetter).where(DeadLetter.event_id == purchase)).all()
    assert len(letters) == 1 and "no accumulation to reverse" in letters[0].error


def test_poison_messages_become_dead_letters_and_the_worker_goes_on(fault_dir: Path) -> None:
    world = committed_world()
    customer, purchase = _purchase(world)
    worker = start_worker(fault_dir, "poisoned")
    settings = get_settings()
    try:
        from worker.celery_app import app

        unknown_id = str(uuid.uuid4())
        app.send_task("reversals.no_such_task", args=["x"], task_id=unknown_id)
        with Connection(settings.broker_url) as conn:
            producer = Producer(
                conn, exchange=Exchange(settings.queue, type="direct"), routing_key=settings.queue
            )
            producer.publish(
                b"\x00{not json",
                content_type="application/json",
                content_encoding="utf-8",
                serializer=None,
                headers={"task": "reversals.reverse_event", "id": "garbage"},
            )

        def letters() -> list[str]:
            with unit_of_work() as session:
                return list(
                    session.scalars(
                        select(DeadLetter.task_name).where(
                            DeadLetter.task_name.in_(["reversals.no_such_task", "undecodable"])
                        )
                    )
                )

        kept = wait_until(lambda: len(letters()) >= 2 and letters(), 60, "two dead letters")
        assert sorted(kept) == ["reversals.no_such_task", "undecodable"]
        world.request_reversal(purchase)  # the worker still works
        wait_status(purchase, "REVERSED")
        assert worker.poll() is None
    finally:
        stop_group(worker)
    check_ledger(customer)


FAULT_TRIGGER = """
CREATE TABLE IF NOT EXISTS fault_events (event_id uuid PRIMARY KEY);
CREATE OR REPLACE FUNCTION fault_claim() RETURNS trigger AS $$
BEGIN
  IF NEW.status = 'PROCESSING' AND EXISTS (SELECT 1 FROM fault_events WHERE event_id = NEW.id)
  THEN RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS fault_claim ON events;
CREATE TRIGGER fault_claim BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION fault_claim();
"""


def test_exhausted_retries_dead_letter_then_replay_reverses_exactly_once(fault_dir: Path) -> None:
    world = committed_world()
    customer, purchase = _purchase(world)
    with unit_of_work() as session:
        session.execute(text(FAULT_TRIGGER))
        session.execute(text("INSERT INTO fault_events VALUES (:e)"), {"e": purchase})
    env = {
        "FAULT_EVENT": str(purchase),
        "FAULT_DIR": str(fault_dir),
        "TASK_MAX_RETRIES": "2",
        "TASK_RETRY_BASE_DELAY": "0.2",
    }
    worker = start_worker(fault_dir, "retrying", env)
    try:
        world.request_reversal(purchase)
        wait_status(purchase, "FAILED")
        assert deliveries(fault_dir) == 3  # the first try and two retries
        with unit_of_work() as session:
            letter = session.scalars(
                select(DeadLetter).where(DeadLetter.event_id == purchase)
            ).one()
            assert letter.attempts == 3 and "SerializationFailure" in letter.error
            session.execute(text("DELETE FROM fault_events WHERE event_id = :e"), {"e": purchase})
        assert reversal_count(purchase) == 0 and world.balance(customer) == 400

        def dlq(*args: str) -> str:
            done = subprocess.run(
                [str(BIN / "reversals"), "dlq", *args], check=True, capture_output=True, text=True
            )
            return done.stdout

        listed = json.loads(dlq("list", "--json"))
        assert str(letter.id) in [row["id"] for row in listed]
        assert "REPLAYED" in dlq("replay", str(letter.id))
        wait_status(purchase, "REVERSED")
        assert "ALREADY_REPLAYED" in dlq("replay", str(letter.id))
        time.sleep(1)
    finally:
        stop_group(worker)
        with unit_of_work() as session:
            session.execute(text("DROP TRIGGER IF EXISTS fault_claim ON events"))
    assert status(purchase) == "REVERSED"
    assert reversal_count(purchase) == 4
    assert world.balance(customer) == 500
    check_ledger(customer)


def test_sigterm_finishes_the_task_in_hand_and_loses_nothing(fault_dir: Path) -> None:
    world = committed_world()
    customer, purchase = _purchase(world)
    _, other = _purchase(world)
    env = {"FAULT_EVENT": str(purchase), "FAULT_DIR": str(fault_dir), "FAULT_SLOW_SECONDS": "3"}
    worker = start_worker(fault_dir, "terminated", env)
    try:
        world.request_reversal(purchase)
        wait_until(lambda: deliveries(fault_dir) >= 1, 60, "the task to start")
        world.request_reversal(other)  # queued behind it
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    finally:
        stop_group(worker)
    assert status(purchase) == "REVERSED"  # warm shutdown finished the task in hand
    after = start_worker(fault_dir, "after-term")
    try:
        # Whatever the first worker held unacked comes back by visibility timeout or,
        # sooner, by the sweeper.
        time.sleep(get_settings().pending_lease + 0.5)
        sweep(get_settings().pending_lease)
        wait_status(other, "REVERSED")
    finally:
        stop_group(after)
    assert reversal_count(purchase) == 4 and reversal_count(other) == 4
    check_ledger(customer)
    with unit_of_work() as session:
        assert session.get_one(Event, other).reversal_attempts == 1
