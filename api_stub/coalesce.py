"""Requests that arrive together are decided together: one transaction, one thread trip.

A single reversal request's own work is small (lock the event, write it, read its
view); what made the intake slow was what each request paid around it: a trip to
the threadpool, a pooled connection, a commit waiting for the disk, a message
published, and threads taking turns on the GIL at every round trip (README,
"Where the time goes"). Here the requests an api process has waiting are handed,
as one list, to a `decide` function that runs in the threadpool and answers each
of them; the process runs one such list at a time, and whatever arrives meanwhile
waits for the next. Under light load a list is one request; under load the lists
grow, and the per-request costs are paid once per list.

A list starts once the requests stop arriving: when no new one has come for
QUIET seconds, LINGER at most since the list could have started. Started at once,
as it used to be, a list took the first requests of a burst and left the rest for
the next one; under steady load a process's requests then split into groups that
took turns, each waiting for the other's list as well as its own (lists of 14 then
1, 11 then 4, ... in the bench's intake). Gathered, they stay one list per round:
in the bench's intake, 15 to 19 requests a list instead of 1 to 16, and a fifth
less of the api's CPU per request (README, "Where the time goes"). A request alone
waits QUIET for company that does not come.

`decide` answers every request, in order, with its result or the exception to
raise for it; the request's own coroutine raises it, so the app's exception handlers
answer as they would for a request decided alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

QUIET = 0.002  # seconds without a new request before the list starts
LINGER = 0.03  # seconds at most a list waits for more

Request = TypeVar("Request")
Result = TypeVar("Result")


class Coalescer(Generic[Request, Result]):
    def __init__(
        self,
        decide: Callable[[list[Request]], Sequence[Result | Exception]],
        limit: int,
        *,
        quiet: float = QUIET,
        linger: float = LINGER,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be 1 or more, not {limit}")
        self._decide, self._limit = decide, limit
        self._quiet, self._linger = quiet, linger
        # Per event loop, the requests waiting for the next list, while one is being
        # decided (no entry: none is). Keyed by loop so that an app served by several
        # loops (a test client's, one after another) never resolves a future of another.
        self._waiting: dict[asyncio.AbstractEventLoop, list[tuple[Request, asyncio.Future[Result]]]]
        self._waiting = {}
        self._running: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def submit(self, request: Request) -> Result:
        """The request's result, decided with the others waiting in this process."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        waiting = self._waiting.get(loop)
        if waiting is None:
            waiting = self._waiting[loop] = []
            # Starts at the loop's next turn: requests already read by then join the list.
            task = loop.create_task(self._drain(loop, waiting))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        waiting.append((request, future))
        return await future

    async def _gather(
        self,
        loop: asyncio.AbstractEventLoop,
        waiting: list[tuple[Request, asyncio.Future[Result]]],
    ) -> None:
        """Wait while requests keep arriving (see the module's doc), or until the list is full."""
        deadline = loop.time() + self._linger
        seen = len(waiting)
        while seen < self._limit:
            left = deadline - loop.time()
            if left <= 0 or self._quiet <= 0:
                return
            await asyncio.sleep(min(self._quiet, left))
            if len(waiting) == seen:
                return
            seen = len(waiting)

    async def _drain(
        self,
        loop: asyncio.AbstractEventLoop,
        waiting: list[tuple[Request, asyncio.Future[Result]]],
    ) -> None:
        batch: list[tuple[Request, asyncio.Future[Result]]] = []
        try:
            while waiting:
                await self._gather(loop, waiting)
                batch = waiting[: self._limit]
                del waiting[: self._limit]
                outcomes = await run_in_threadpool(self._decide, [r for r, _ in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"{len(outcomes)} answers for {len(batch)} requests")
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its request was cancelled meanwhile
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                batch = []
        except Exception as exc:
            # `decide` itself failed (it answers its requests' own failures): every
            # request not yet answered gets the error, none waits forever.
            for _, future in batch + waiting:
                if not future.done():
                    future.set_exception(exc)
        finally:
            del self._waiting[loop]
            for _, future in batch + waiting:  # cancelled (the loop is closing)
                future.cancel()
