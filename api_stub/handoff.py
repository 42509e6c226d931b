"""Connections handed to the api's workers in turn (`reversals api --workers N`, Linux).

A client that opens its keep-alive connections at once (a proxy's pool, the bench's
32) keeps each with the worker that took it, and the worker holding more answers each
of them later: the p99 is that worker's. How connections were split:
- uvicorn's one shared socket: the most recently idle worker took every connection
  waiting (22/10, 24/8, all 32 on one);
- a socket per worker (`SO_REUSEPORT`): the kernel chose by a hash of each
  connection's addresses, 16/16 at times, 14/18 most often, 10/22 or 9/23 now and
  then (measured on the bench's intake, the two codes taking turns: a p99
  of 36 to 53 ms, mean 42.5, against 35 to 43 ms, mean 38.6, in turn).

So the supervisor now takes every connection itself (`Acceptor`, a thread of its
own) and passes each one's file descriptor (`SCM_RIGHTS`) to the next worker in
turn, over a Unix socket that worker opened to it when it started (`Channel`). A
worker's event loop (`HandoffLoop`, uvicorn's `loop` setting) serves a
connection handed to it as one it had accepted (`connect_accepted_socket`). Only the
accept passes through the supervisor; requests and answers go straight between the
client and the worker holding the connection.

A worker that dies closes its channel: the supervisor stops handing it connections
and hands them to the others, and its replacement enrols when it starts. What was
handed to it while it was dying is lost with it, as its own accept queue was. With
no worker enrolled, connections wait in the listening socket's backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvloop

logger = logging.getLogger("uvicorn.error")

# Each connection's descriptor is one message of one byte (SOCK_SEQPACKET keeps them
# apart); a worker reads the messages waiting until none is left.
_MARK = b"c"


class Registry(socket.socket):
    """The supervisor's Unix socket where each worker enrols; what uvicorn hands workers.

    uvicorn's supervisor pickles its sockets to each worker it starts, first or
    restarted: this one arrives as a new `Channel` connected to it (`_enrol`).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_enrol, (self.getsockname(),))


class Channel(socket.socket):
    """A worker's end of its channel: connections arrive on it, one descriptor each."""


def _enrol(address: str | bytes) -> Channel:
    channel = Channel(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel.connect(address)
    return channel


class Acceptor:
    """Accepts on `listener` and hands each connection to the next enrolled worker."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.listener.setblocking(False)
        self.registry = Registry(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Linux's abstract namespace: no file to leave behind, and a name no one guesses.
        self.registry.bind(f"\0reversals-api-{os.getpid()}-{secrets.token_hex(8)}")
        self.registry.listen(64)
        self.registry.setblocking(False)
        self.workers: list[socket.socket] = []
        self._turn = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.registry, selectors.EVENT_READ, self._enrol)

    def start(self) -> None:
        threading.Thread(target=self._run, name="acceptor", daemon=True).start()

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                try:
                    key.data(key.fileobj)
                except Exception:
                    # Logged and carried on: were this thread to end, the api would take
                    # no more connections while its processes looked healthy.
                    logger.exception("handing a connection over failed")

    def _enrol(self, _registry: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                channel, _ = self.registry.accept()
                channel.setblocking(False)
                if not self.workers:
                    self._selector.register(self.listener, selectors.EVENT_READ, self._hand_over)
                self.workers.append(channel)
                # A worker never writes to its channel: readable means it has closed.
                self._selector.register(channel, selectors.EVENT_READ, self._retire)

    def _retire(self, channel: socket.socket) -> None:
        if channel not in self.workers:
            return
        self.workers.remove(channel)
        self._selector.unregister(channel)
        channel.close()
        if not self.workers:
            # Until a worker enrols again, connections wait in the backlog.
            self._selector.unregister(self.listener)

    def _hand_over(self, _listener: Any) -> None:
        while self.workers:
            try:
                connection, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # too many open files, say: the next turn tries again
                logger.warning("accept failed: %s", exc)
                return
            with connection:  # the worker holds its own copy once handed over
                self._send(connection)

    def _send(self, connection: socket.socket) -> None:
        for _ in range(len(self.workers) * 2):
            if not self.workers:
                break
            channel = self.workers[self._turn % len(self.workers)]
            self._turn += 1
            try:
                socket.send_fds(channel, [_MARK], [connection.fileno()])
                return
            except BlockingIOError:
                continue  # this worker has not read what it was handed yet: the next one
            except OSError:
                self._retire(channel)
        logger.warning("no worker could take a connection; it is closed")


class HandedOver(asyncio.AbstractServer):
    """A worker's 'server': serves the connections the supervisor hands it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        channel: Channel,
        ssl: Any,
    ) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._channel = channel
        self._ssl = ssl
        self._tasks: set[asyncio.Task[None]] = set()
        channel.setblocking(False)
        loop.add_reader(channel.fileno(), self._receive)
        self._serving = True
        self._closed = loop.create_future()

    def _receive(self) -> None:
        while self._serving:
            try:
                data, fds, _, _ = socket.recv_fds(self._channel, len(_MARK), 1)
            except BlockingIOError:
                return
            except OSError as exc:
                logger.error("the supervisor's channel failed: %s", exc)
                self.close()
                return
            if not data and not fds:
                self.close()  # the supervisor has gone: nothing more will come
                return
            for fd in fds:
                task = self._loop.create_task(self._serve(socket.socket(fileno=fd)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _serve(self, connection: socket.socket) -> None:
        connection.setblocking(False)
        # uvloop sets TCP_NODELAY on it, as on a connection it accepts itself.
        try:
            await self._loop.connect_accepted_socket(
                self._protocol_factory, connection, ssl=self._ssl
            )
        except OSError:  # the client left before it was served
            connection.close()

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._channel.fileno())
            self._channel.close()
            self._closed.set_result(None)

    async def start_serving(self) -> None:
        return None  # it serves from the start

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        return None  # nothing is left to wait for once closed: connections are uvicorn's

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving


class HandoffLoop(uvloop.Loop):
    """uvloop, serving a `Channel` as the connections handed over it."""

    # The override's return type: a `Channel` gets a server of its own kind, of which
    # uvicorn uses what every asyncio server has (close).
    async def create_server(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> asyncio.AbstractServer:
        sock = kwargs.get("sock")
        if not isinstance(sock, Channel):
            server: asyncio.AbstractServer = await super().create_server(*args, **kwargs)
            return server
        return HandedOver(self, args[0], sock, kwargs.get("ssl"))


# uvicorn's `loop` setting: an import string names the loop's factory itself.
LOOP = f"{__name__}:{HandoffLoop.__name__}"
