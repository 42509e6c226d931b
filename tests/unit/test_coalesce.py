"""Requests that arrive together are decided together (api_stub.coalesce)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from api_stub.coalesce import Coalescer


class Refused(Exception):
    pass


class Decider:
    """Doubles each number, refuses negatives; records every list it was given."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.lists: list[list[int]] = []
        self.gate = gate

    def __call__(self, numbers: list[int]) -> list[int | Exception]:
        if self.gate is not None:
            self.gate.wait(5)  # hold the first list until the others have arrived
        self.lists.append(numbers)
        return [Refused(n) if n < 0 else 2 * n for n in numbers]


def test_requests_waiting_together_are_one_list_each_answered_in_its_place() -> None:
    gate = threading.Event()
    decide = Decider(gate)
    coalescer = Coalescer(decide, limit=3)

    async def main() -> list[asyncio.Future[int]]:
        first = asyncio.ensure_future(coalescer.submit(1))
        await asyncio.sleep(0.05)  # the first list (just 1) is being decided
        rest = [asyncio.ensure_future(coalescer.submit(n)) for n in (2, -3, 4, 5, 6)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest, return_exceptions=True)
        return [first, *rest]

    done = asyncio.run(main())
    # One list at a time: 1 alone, then what waited meanwhile, at most `limit` a list.
    assert decide.lists == [[1], [2, -3, 4], [5, 6]]
    # The refusal is raised in its own request, and only there.
    assert isinstance(done[2].exception(), Refused)
    assert [f.result() for i, f in enumerate(done) if i != 2] == [2, 4, 8, 10, 12]
    assert coalescer._waiting == {}  # nothing left behind once idle


def test_a_request_alone_is_decided_at_once_and_each_idle_start_is_a_new_list() -> None:
    decide = Decider()
    coalescer = Coalescer(decide, limit=50)

    async def main() -> list[int]:
        return [await coalescer.submit(n) for n in (1, 2, 3)]

    assert asyncio.run(main()) == [2, 4, 6]
    assert decide.lists == [[1], [2], [3]]


def test_a_failing_decide_fails_every_request_of_its_list_and_of_those_waiting() -> None:
    def decide(numbers: list[int]) -> list[int | Exception]:
        raise RuntimeError("database gone")

    coalescer: Coalescer[int, int] = Coalescer(decide, limit=2)

    async def main() -> list[int | BaseException]:
        waiting = [asyncio.ensure_future(coalescer.submit(n)) for n in (1, 2, 3)]
        return await asyncio.gather(*waiting, return_exceptions=True)

    answers = asyncio.run(main())
    assert [str(a) for a in answers] == ["database gone"] * 3
    assert coalescer._waiting == {}


def test_a_decide_that_answers_the_wrong_number_of_requests_fails_them() -> None:
    coalescer: Coalescer[int, int] = Coalescer(lambda numbers: [1], limit=5)

    async def main() -> list[int | BaseException]:
        waiting = [asyncio.ensure_future(coalescer.submit(n)) for n in (1, 2)]
        return await asyncio.gather(*waiting, return_exceptions=True)

    answers = asyncio.run(main())
    assert all(isinstance(a, RuntimeError) for a in answers)
    assert "1 answers for 2 requests" in str(answers[0])


def test_loops_one_after_another_each_get_their_own_lists() -> None:
    """A test client runs an app on one event loop, then on another: never crossed."""
    decide = Decider()
    coalescer = Coalescer(decide, limit=5)
    for n in (1, 2):
        assert asyncio.run(coalescer.submit(n)) == 2 * n
    assert decide.lists == [[1], [2]]


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        Coalescer(Decider(), limit=limit)


def test_a_list_waits_while_requests_keep_arriving_and_starts_at_a_quiet_moment() -> None:
    decide = Decider()
    coalescer = Coalescer(decide, limit=50, quiet=0.1, linger=5)

    async def main() -> None:
        waiting = []
        for n in (1, 2, 3):  # a burst: each well within `quiet` of the last
            waiting.append(asyncio.ensure_future(coalescer.submit(n)))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.4)  # quiet: the list of three has started
        waiting.append(asyncio.ensure_future(coalescer.submit(4)))
        await asyncio.gather(*waiting)

    asyncio.run(main())
    assert decide.lists == [[1, 2, 3], [4]]


def test_a_list_waits_no_longer_than_linger_however_steady_the_arrivals() -> None:
    decide = Decider()
    coalescer = Coalescer(decide, limit=50, quiet=0.2, linger=0.15)

    async def main() -> None:
        waiting = []
        for n in range(12):  # one every 50 ms for 0.6 s, never quiet for 0.2 s
            waiting.append(asyncio.ensure_future(coalescer.submit(n)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*waiting)

    asyncio.run(main())
    assert sorted(n for numbers in decide.lists for n in numbers) == list(range(12))
    # The first list started after about 0.15 s: it did not wait for all twelve.
    assert 2 <= len(decide.lists[0]) < 12, decide.lists


def test_a_full_list_starts_without_waiting() -> None:
    decide = Decider()
    coalescer = Coalescer(decide, limit=2, quiet=10, linger=10)

    async def main() -> list[int]:
        both = asyncio.gather(coalescer.submit(1), coalescer.submit(2))
        return list(await asyncio.wait_for(both, timeout=5))

    assert asyncio.run(main()) == [2, 4]
    assert decide.lists == [[1, 2]]
