"""`reversals api`'s command: the service's app, or the bench's intake floor (bench.floor)
served by exactly the same command, with one or more processes; the socket each of
several processes listens on (api_stub.serve)."""

from __future__ import annotations

import contextlib
import pickle
import socket
import sys

import pytest

from api_stub.serve import hold
from worker.cli import APP_FACTORY, _api_cmd

FLOOR = "bench.floor:app_factory"


@pytest.mark.parametrize("workers", [1, 2])
def test_the_api_command_serves_the_service_unless_told_another_app(workers: int) -> None:
    service = _api_cmd("127.0.0.1", 8000, workers)
    floor = _api_cmd("127.0.0.1", 8000, workers, FLOOR)
    assert service.count(APP_FACTORY) == 1
    assert FLOOR not in service
    # Nothing else differs: the floor is measured under the service's own command.
    assert floor == [FLOOR if part == APP_FACTORY else part for part in service]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads on Linux")
def test_each_worker_listens_on_a_socket_of_its_own_and_connections_spread() -> None:
    """What uvicorn's supervisor hands each worker (it pickles its sockets to every
    worker it starts) is a new socket on the supervisor's address; the supervisor's
    own socket holds the port and never takes a connection."""
    held = hold("127.0.0.1", 0)
    address = held.getsockname()
    # What multiprocessing does to the supervisor's own socket, nothing untrusted.
    workers = [pickle.loads(pickle.dumps(held)) for _ in range(2)]  # noqa: S301
    try:
        for sock in workers:
            assert sock is not held
            assert sock.getsockname() == address
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=2).close()  # held alone: not listening
        for sock in workers:
            sock.listen(64)
            sock.setblocking(False)
        clients = [socket.create_connection(address, timeout=2) for _ in range(48)]
        accepted = [0, 0]
        for i, sock in enumerate(workers):
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.accept()[0].close()
                    accepted[i] += 1
        for client in clients:
            client.close()
        # Spread by a hash of each connection's addresses: every connection is
        # accepted, and both workers take some (all 48 on one: a chance of 2 in 2^48).
        assert sum(accepted) == 48
        assert min(accepted) > 0, accepted
    finally:
        for sock in [held, *workers]:
            sock.close()


def test_the_supervisor_refuses_an_address_already_taken() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(OSError):
            hold("127.0.0.1", taken.getsockname()[1]).close()
    finally:
        taken.close()
