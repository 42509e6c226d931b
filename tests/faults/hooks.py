"""Fault injection for real `celery worker` processes, loaded with `-I tests.faults.hooks`.

Driven by environment variables so each test arms exactly what it needs:
- FAULT_EVENT: the event id the faults apply to (others run normally);
- FAULT_DIR: a folder where each delivery of that event leaves a line (`deliveries`)
  and where one-shot faults leave their marker;
- FAULT_KILL_AFTER_COMMIT=1: SIGKILL the worker child once, after the task's
  transaction committed and before the message is acknowledged (task_postrun);
- FAULT_SLOW_SECONDS=N: sleep N seconds before the first delivery runs (task_prerun);
- FAULT_KILL_MID_BATCH=1: SIGKILL the worker child once, inside a bulk batch's
  transaction, right after the armed event's reversal was written and before the
  batch's next event, the commit and the acknowledgement.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import signals


def _mine(sender: Any, args: Any) -> bool:
    """A reversal message of the armed event, alone or in a bulk batch (its
    first-processing messages don't count)."""
    target = os.environ.get("FAULT_EVENT")
    name = getattr(sender, "name", "")
    if not target or not args:
        return False
    if name == "reversals.reverse_events":
        return len(args) > 1 and isinstance(args[1], list) and target in args[1]
    return name == "reversals.reverse_event" and str(args[0]) == target


def _once(name: str) -> bool:
    marker = Path(os.environ["FAULT_DIR"]) / name
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


@signals.task_prerun.connect
def _before(sender: Any = None, args: Any = None, **_: Any) -> None:
    if not _mine(sender, args):
        return
    with (Path(os.environ["FAULT_DIR"]) / "deliveries").open("a") as log:
        log.write(f"{os.getpid()}\n")
    slow = float(os.environ.get("FAULT_SLOW_SECONDS", "0"))
    if slow and _once("slowed"):
        time.sleep(slow)


@signals.task_postrun.connect
def _after(sender: Any = None, args: Any = None, **_: Any) -> None:
    if _mine(sender, args) and os.environ.get("FAULT_KILL_AFTER_COMMIT") and _once("killed"):
        os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("FAULT_KILL_MID_BATCH"):
    from worker import processing

    # processing imports reverse_event by name (not re-exported): reached through vars().
    _reverse = vars(processing)["reverse_event"]

    def _reverse_then_die(session: Any, event: Any, *args: Any, **kwargs: Any) -> Any:
        report = _reverse(session, event, *args, **kwargs)
        if str(event.id) == os.environ.get("FAULT_EVENT") and _once("killed"):
            session.flush()  # the armed event's writes reach PostgreSQL, uncommitted
            os.kill(os.getpid(), signal.SIGKILL)
        return report

    # handle_batch looks `reverse_event` up in its module at each call.
    vars(processing)["reverse_event"] = _reverse_then_die
