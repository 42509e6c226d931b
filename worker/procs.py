"""Process bookkeeping shared by the worker, the api, the bench and the tests."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path


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
