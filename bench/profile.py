"""`reversals bench --profile PATH`: py-spy on the worker while it drains.

py-spy samples the worker and its pool processes from outside (no code change,
no slowdown worth the name), idle stacks included, so that time spent waiting for
PostgreSQL shows as well as time spent in Python. The raw collapsed stacks are
kept at PATH; `summarize` turns them into where the time goes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Leaf frames where a pool process waits for PostgreSQL's answer (psycopg blocks in
# C below these Python frames; with --idle, py-spy shows them as the leaf).
WAITING = re.compile(
    r"^(?:Connection\.wait|BaseCursor\._send_query_prepared|BaseCursor\._send_query|"
    r"wait|wait_c|wait_conn) \((?:.*/)?psycopg/"
)
# Inclusive shares worth showing: the reversal's steps, and the driver's round trips.
KEY_FUNCTIONS = (
    ("handle_message", "processing.py"),
    ("reverse_event", "reverse.py"),
    ("load_context", "wallet.py"),
    ("_give_back", "reverse.py"),
    ("return_points", "wallet.py"),
    ("_take_back", "reverse.py"),
    ("settle_debts", "wallet.py"),
    ("recompute_tier", "wallet.py"),
    ("snapshot", "wallet.py"),
    ("_autoflush", "session.py"),
    ("flush", "session.py"),
    ("do_ping", "_psycopg_common.py"),
    ("do_commit", "default.py"),
    ("do_execute", "default.py"),
)


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


class Recorder:
    """py-spy attached to one worker (and its pool processes) until stopped."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        cmd = [
            exe, "record", "--pid", str(pid), "--subprocesses", "--idle", "--nonblocking",
            "--rate", str(rate), "--format", "raw", "--output", str(out),
        ]  # fmt: skip
        self.proc = subprocess.Popen(  # noqa: S603 - py-spy, no shell
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGINT: py-spy stops sampling and writes what it has.
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def _name(frame: str) -> str:
    """`function (path/to/file.py:123)` → `function (file.py)`."""
    match = re.match(r"^(.*?) \((?:.*/)?([^/:]+)(?::\d+)?\)$", frame.strip())
    return f"{match.group(1)} ({match.group(2)})" if match else frame.strip()


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Where a pool process's time goes while it runs reversal tasks."""
    stacks = _parse(path)
    in_task = [(s, n) for s, n in stacks if any(f.startswith("handle_message ") for f in s)]
    total = sum(n for _, n in in_task)
    if not total:
        return {"samples": 0}
    waiting = sum(n for s, n in in_task if WAITING.search(s[-1]))
    inclusive: Counter[tuple[str, str]] = Counter()
    own: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    for stack, n in in_task:
        seen = set()
        for frame in stack:
            key = _key(frame)
            if key in KEY_FUNCTIONS and key not in seen:
                inclusive[key] += n
                seen.add(key)
        own[_name(stack[-1])] += n
        layers[_layer(stack[-1])] += n

    def share(n: int) -> float:
        return round(100 * n / total, 1)

    return {
        "samples_in_tasks": total,
        "round_trips_pct": share(waiting),
        "layers_pct": {k: share(v) for k, v in layers.most_common()},
        "inclusive_pct": {
            f"{name} ({file})": share(inclusive[(name, file)])
            for name, file in KEY_FUNCTIONS
            if inclusive[(name, file)]
        },
        "top_self_pct": {k: share(v) for k, v in own.most_common(top)},
    }


def _key(frame: str) -> tuple[str, str]:
    """`Class.method (path/to/file.py:12)` → (`method`, `file.py`)."""
    match = re.match(r"^(.*?) \((?:.*/)?([^/:]+)(?::\d+)?\)$", frame.strip())
    if match is None:
        return frame, ""
    return match.group(1).rsplit(".", 1)[-1], match.group(2)


def _layer(leaf: str) -> str:
    if WAITING.search(leaf):
        return "round trips to PostgreSQL (psycopg send and wait)"
    for marker, layer in (
        ("psycopg", "psycopg (driver)"),
        ("sqlalchemy", "SQLAlchemy"),
        ("/worker/", "service code"),
        ("celery", "Celery"),
        ("kombu", "Celery"),
        ("billiard", "Celery"),
        ("structlog", "logging"),
        ("logging", "logging"),
    ):
        if marker in leaf:
            return layer
    return "other"


def stop_quietly(recorder: Recorder | None) -> None:
    if recorder is not None:
        with contextlib.suppress(Exception):
            recorder.stop()
