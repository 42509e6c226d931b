"""Dead letters (SPEC §7): what failed for good, kept in PostgreSQL, and its replay.

A dead letter is written when a message's retries are exhausted, on a permanent
error that is not a business refusal (an inconsistent ledger), and for poison
messages (undecodable bodies, unknown tasks). Replay puts the event back in
flight with a new message; it is idempotent: a letter is replayed once, and an
event no longer FAILED is left alone.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db import unit_of_work
from worker.ledger.views import iso
from worker.ledger.wallet import utcnow
from worker.models import DeadLetter, Event, EventStatus, ReversalStatus
from worker.processing import SessionFactory


@dataclass
class Replay:
    letter_id: uuid.UUID
    outcome: str  # REPLAYED, ALREADY_REPLAYED, NOT_FAILED, NO_EVENT
    queue_message_id: str | None = None


def letter_view(letter: DeadLetter, full: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(letter.id),
        "task_name": letter.task_name,
        "task_id": letter.task_id,
        "event_id": str(letter.event_id) if letter.event_id else None,
        "error": letter.error,
        "attempts": letter.attempts,
        "first_failed_at": iso(letter.first_failed_at),
        "last_failed_at": iso(letter.last_failed_at),
        "replayed_at": iso(letter.replayed_at),
    }
    if full:
        view["payload"] = letter.payload
        view["traceback"] = letter.traceback
    return view


def list_letters(session: Session, include_replayed: bool = False) -> list[DeadLetter]:
    query = select(DeadLetter).order_by(DeadLetter.last_failed_at.desc())
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    return list(session.scalars(query))


def replay(session: Session, letter_id: uuid.UUID) -> Replay:
    """Put the letter's event back in flight (published after the caller commits)."""
    letter = session.get(DeadLetter, letter_id, with_for_update=True)
    if letter is None:
        raise LookupError(f"dead letter {letter_id} not found")
    if letter.replayed_at is not None:
        return Replay(letter.id, "ALREADY_REPLAYED")
    letter.replayed_at = utcnow()
    if letter.event_id is None:
        return Replay(letter.id, "NO_EVENT")
    event = session.get(Event, letter.event_id, with_for_update=True)
    if event is None or event.status != EventStatus.FAILED:
        return Replay(letter.id, "NOT_FAILED")
    if event.reversal_status == ReversalStatus.FAILED:
        event.reversal_status = ReversalStatus.PENDING.value
        event.reversal_attempts = 0
        event.reversal_last_error = None
        event.reversal_dead_lettered = False
    else:
        event.error = None
        event.attempts = 0
        event.resolved_at = None
    event.status = EventStatus.PENDING.value
    # Imported here: the CLI loads this module before it knows the broker's URL.
    from worker.intake import enqueue

    enqueue(session, event)
    return Replay(letter.id, "REPLAYED", event.queue_message_id)


def replay_all(factory: SessionFactory = None) -> list[Replay]:
    with unit_of_work(factory) as session:
        ids = [letter.id for letter in list_letters(session)]
    results = []
    for letter_id in ids:
        with unit_of_work(factory) as session:
            results.append(replay(session, letter_id))
    return results


@click.group("dlq")
def dlq() -> None:
    """Inspect and replay dead letters."""


@dlq.command("list")
@click.option("--all", "include_replayed", is_flag=True, help="include replayed letters")
@click.option("--json", "as_json", is_flag=True)
def list_command(include_replayed: bool, as_json: bool) -> None:
    from worker.cli import _urls

    _urls()
    with unit_of_work() as session:
        rows = [letter_view(x) for x in list_letters(session, include_replayed)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "task", "event", "attempts", "last failed", "error", "replayed")
    for row in rows:
        table.add_row(
            row["id"],
            row["task_name"],
            row["event_id"] or "-",
            str(row["attempts"]),
            row["last_failed_at"],
            (row["error"] or "")[:60],
            row["replayed_at"] or "",
        )
    Console().print(table)


@dlq.command("show")
@click.argument("letter_id", type=click.UUID)
def show_command(letter_id: uuid.UUID) -> None:
    from worker.cli import _urls

    _urls()
    with unit_of_work() as session:
        letter = session.get(DeadLetter, letter_id)
        if letter is None:
            raise click.ClickException(f"dead letter {letter_id} not found")
        click.echo(json.dumps(letter_view(letter, full=True), indent=2))


@dlq.command("replay")
@click.argument("letter_id", type=click.UUID, required=False)
@click.option("--all", "everything", is_flag=True, help="replay every letter not yet replayed")
def replay_command(letter_id: uuid.UUID | None, everything: bool) -> None:
    from worker.cli import _urls

    _urls()
    if everything == (letter_id is not None):
        raise click.UsageError("give a dead letter id or --all")
    if everything:
        results = replay_all()
    else:
        assert letter_id is not None
        try:
            with unit_of_work() as session:
                results = [replay(session, letter_id)]
        except LookupError as exc:
            raise click.ClickException(str(exc)) from exc
    for result in results:
        click.echo(f"{result.letter_id} {result.outcome} {result.queue_message_id or ''}".rstrip())
