"""`reversals api`'s command: the service's app, or the bench's intake floor (bench.floor)
served by exactly the same command, with one or more processes; the supervisor's
address (api_stub.serve). How its workers get connections: tests/unit/test_handoff.py."""

from __future__ import annotations

import socket

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


def test_the_supervisor_refuses_an_address_already_taken() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(OSError):
            hold("127.0.0.1", taken.getsockname()[1]).close()
    finally:
        taken.close()
