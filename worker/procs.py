"""Process bookkeeping shared by the worker, the api, the bench and the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def alive(pid: int) -> bool:
    """Whether a process of this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fresh_directory(state_dir: Path, kind: str) -> Path:
    """`<state_dir>/prometheus/<kind>-<host>-<pid>`, new and empty; the directories
    of this kind left by processes that are gone are removed."""
    root = state_dir.resolve() / "prometheus"
    host = socket.gethostname()
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(f"{kind}-{host}-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    directory = root / f"{kind}-{host}-{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    return directory


def free_port() -> int:
    """A loopback TCP port free right now (for a child server of ours)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Call `check` until it returns something true, and return that; TimeoutError after
    `timeout` seconds (the check runs at least once)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 30) -> None:
    """Signal a child started with start_new_session=True and all of its own children;
    SIGKILL them if they outlive `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except (ProcessLookupError, PermissionError):
        pass
