"""The intake's load generator: keep-alive HTTP/1.1 connections, one request at a time each.

The load shares the machine's cores with the api it measures, and a response it has
not read yet is still counted in that request's latency: under the intake's load,
aiohttp's client used 0.22 ms of CPU per request here and answered its 32
connections one after another, about 7 ms per round of responses. This client does
the little the measure needs (a POST of a fixed body; the status of an answer that
carries Content-Length, as every JSON answer of the api does) in about 0.05 ms. An
answer it cannot read, a connection closed or a request unanswered for TIMEOUT
seconds fails that connection: the request is counted under the error's name, and
the next one opens a new connection.
"""

from __future__ import annotations

import asyncio
import re

TIMEOUT = 30.0
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class BadAnswer(ValueError):
    """An answer this client does not read (no Content-Length, not HTTP/1.x)."""


def post(host: str, port: int, path: str, token: str, body: bytes) -> bytes:
    """The bytes of one POST of `body` (JSON) to `path`, with a bearer token."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buffer = bytearray()
        self._answer: asyncio.Future[int] | None = None
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(lambda: cls(loop), host, port)
        return connection

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def send(self, request: bytes) -> int:
        """Send one request; its answer's status code."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        answer: asyncio.Future[int] = self._loop.create_future()
        self._answer = answer
        timer = self._loop.call_later(TIMEOUT, self._fail, TimeoutError("no answer"))
        try:
            self._transport.write(request)
            return await answer
        finally:
            timer.cancel()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._answer is None or self._answer.done():
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return  # the head is not all here yet
        if not self._buffer.startswith(b"HTTP/1."):
            self._fail(BadAnswer(bytes(self._buffer[:40])))
            return
        length = _LENGTH.search(self._buffer, 0, end + 2)
        if length is None:
            self._fail(BadAnswer("no Content-Length"))
            return
        size = end + 4 + int(length.group(1))
        if len(self._buffer) < size:
            return  # the body is not all here yet
        status = int(self._buffer[9:12])
        del self._buffer[:size]
        self._answer.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
        self.close()
