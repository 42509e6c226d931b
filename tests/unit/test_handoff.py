"""Connections handed to the api's workers in turn (api_stub.handoff): the supervisor's
acceptor alone, then `python -m api_stub.serve` with two worker processes."""

from __future__ import annotations

import contextlib
import http.client
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_stub.handoff import Acceptor, Channel
from bench.env import API_STARTED
from worker.cli import _api_cmd
from worker.procs import free_port, stop_group, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="connections are handed over on Linux"
)


def _received(channel: Channel) -> list[socket.socket]:
    """The connections handed over `channel` so far."""
    got = []
    channel.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            _, fds, _, _ = socket.recv_fds(channel, 1, 8)
            got += [socket.socket(fileno=fd) for fd in fds]
    return got


def test_the_acceptor_hands_connections_in_turn_and_none_to_a_worker_gone() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    acceptor = Acceptor(listener)
    acceptor.start()
    # What uvicorn's supervisor does for each worker it starts (it pickles its
    # sockets to the worker): the registry arrives as a channel connected to it.
    first, second = (pickle.loads(pickle.dumps(acceptor.registry)) for _ in range(2))  # noqa: S301
    assert isinstance(first, Channel) and isinstance(second, Channel)
    wait_until(lambda: len(acceptor.workers) == 2, 5, "both workers to enrol")
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(6)]
    handed: list[list[socket.socket]] = [[], []]

    def all_handed(count: int, *channels: Channel) -> bool:
        for i, channel in enumerate(channels):
            handed[i] += _received(channel)
        return sum(map(len, handed)) == count

    wait_until(lambda: all_handed(6, first, second), 5, "six connections handed over")
    assert [len(h) for h in handed] == [3, 3]
    # Each handed connection is the client's own: what one side writes, the other reads.
    for client in clients:
        client.sendall(b"x")
    assert sorted(s.recv(1) for s in handed[0] + handed[1]) == [b"x"] * 6

    first.close()  # a worker that dies closes its channel
    more = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(4)]
    handed = [[]]
    wait_until(lambda: all_handed(4, second), 5, "four more connections handed over")
    assert len(handed[0]) == 4
    assert acceptor.workers and len(acceptor.workers) == 1
    for s in [*clients, *more, *handed[0], second, listener]:
        s.close()


def test_the_acceptor_carries_on_after_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    acceptor = Acceptor(listener)
    send = acceptor._send
    failures: list[socket.socket] = []

    def fail_once(connection: socket.socket) -> None:
        if not failures:
            failures.append(connection)
            raise RuntimeError("a bug, say")
        send(connection)

    acceptor._send = fail_once  # type: ignore[method-assign]  # the failure under test
    acceptor.start()
    channel = pickle.loads(pickle.dumps(acceptor.registry))  # noqa: S301
    wait_until(lambda: acceptor.workers, 5, "the worker to enrol")
    first = socket.create_connection(listener.getsockname(), timeout=5)
    wait_until(lambda: failures, 5, "the first connection to fail")
    second = socket.create_connection(listener.getsockname(), timeout=5)
    handed: list[socket.socket] = []

    def second_handed() -> bool:
        handed.extend(_received(channel))
        return bool(handed)

    wait_until(second_handed, 5, "the second connection to be handed over")
    second.sendall(b"y")
    assert [s.recv(1) for s in handed] == [b"y"]
    assert "handing a connection over failed" in caplog.text
    for s in [first, second, *handed, channel, listener]:
        s.close()


@contextlib.contextmanager
def _api(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    port = free_port()
    log = tmp_path / "api.log"
    # `reversals api --workers 2`'s own command, serving the pid app.
    cmd = _api_cmd("127.0.0.1", port, 2, "tests.unit.pid_app:app_factory")
    env = {**os.environ, "STATE_DIR": str(tmp_path / "state"), "LOG_LEVEL": "INFO"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield port, proc, log
    finally:
        stop_group(proc)


def _pids_of(port: int, n: int) -> Counter[int]:
    """n keep-alive connections opened at once, then a request on each: whose they are."""
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(n)]
    for connection in connections:
        connection.connect()
    served: Counter[int] = Counter()
    for connection in connections:
        connection.request("GET", "/pid")
        answer = connection.getresponse()
        assert answer.status == 200
        served[int(answer.read())] += 1
    for connection in connections:
        connection.close()
    return served


def test_the_api_splits_connections_evenly_and_serves_on_when_a_worker_dies(
    tmp_path: Path,
) -> None:
    with _api(tmp_path) as (port, proc, log):
        wait_until(lambda: log.read_bytes().count(API_STARTED) >= 2, 60, "two workers to start")
        served = _pids_of(port, 32)
        # By the kernel's hash of addresses, splits of 9/23 were seen; in turn, 16/16.
        assert sorted(served.values()) == [16, 16], served

        gone, kept = served
        os.kill(gone, signal.SIGKILL)
        # Connections handed to it while it was dying are lost with it, as those in
        # its own accept queue would be. Once the supervisor has seen it die (its
        # threads too: a process's files close with its last thread), and until its
        # replacement starts, every connection goes to the worker left.
        died = f"Child process [{gone}] died".encode()
        wait_until(lambda: died in log.read_bytes(), 30, "the supervisor to see it die")
        for _ in range(8):
            assert set(_pids_of(port, 1)) <= {kept} | _new_pids(gone, kept, proc)
        wait_until(lambda: log.read_bytes().count(API_STARTED) >= 3, 60, "the replacement to start")
        served = _pids_of(port, 32)
        assert gone not in served and kept in served
        assert sorted(served.values()) == [16, 16], served


def _new_pids(gone: int, kept: int, proc: subprocess.Popen[bytes]) -> set[int]:
    """The supervisor's children other than the two first workers: a replacement."""
    import psutil  # type: ignore[import-untyped]  # psutil ships no type information

    children = {p.pid for p in psutil.Process(proc.pid).children()}
    return children - {gone, kept}
