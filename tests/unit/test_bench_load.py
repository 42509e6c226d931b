"""The intake's load generator (bench.load), against a small server of canned answers."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

from bench.load import BadAnswer, Connection, post
from bench.measure import _intake

Answer = Callable[[int], list[bytes]]  # request number -> the answer, in pieces


def _json(status: int, reason: str, body: bytes = b'{"data":{}}') -> list[bytes]:
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
    # In pieces, the head split in two: the client must wait for the rest.
    return [head.encode(), f"content-length: {len(body)}\r\n\r\n".encode() + body[:3], body[3:]]


async def _serve(
    answer: Answer, run: Callable[[int], Awaitable[object]]
) -> tuple[object, list[bytes]]:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"Content-Length: (\d+)", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                seen.append(head + body)
                for piece in answer(len(seen)):
                    if not piece:
                        writer.close()  # an empty piece: close instead
                        return
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.001)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await run(port), seen


def test_answers_in_pieces_are_read_one_after_another_on_one_connection() -> None:
    async def run(port: int) -> list[int]:
        connection = await Connection.open("127.0.0.1", port)
        try:
            return [
                await connection.send(post("127.0.0.1", port, f"/x/{n}", "tok", b'{"a":1}'))
                for n in range(3)
            ]
        finally:
            connection.close()

    def answer(n: int) -> list[bytes]:
        return _json(202, "Accepted") if n < 3 else _json(409, "Conflict", b'{"error":{}}')

    statuses, seen = asyncio.run(_serve(answer, run))
    assert statuses == [202, 202, 409]
    assert seen[1].startswith(b"POST /x/1 HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer tok\r\n" in seen[1]
    assert seen[1].endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


@pytest.mark.parametrize(
    ("pieces", "error"),
    [
        ([b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"], BadAnswer),
        ([b"garbage\r\n\r\n"], BadAnswer),
        ([b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", b""], ConnectionError),
    ],
)
def test_an_answer_it_cannot_read_fails_the_request(
    pieces: list[bytes], error: type[Exception]
) -> None:
    async def run(port: int) -> None:
        connection = await Connection.open("127.0.0.1", port)
        with pytest.raises(error):
            await connection.send(post("127.0.0.1", port, "/x", "tok", b"{}"))

    asyncio.run(_serve(lambda n: pieces, run))


def test_the_intake_counts_each_status_and_opens_a_new_connection_after_a_failure() -> None:
    def answer(n: int) -> list[bytes]:
        if n == 2:
            return [b""]  # the server closes the connection instead of answering
        return _json(429, "Too Many Requests") if n % 5 == 0 else _json(202, "Accepted")

    async def run(port: int) -> dict[str, object]:
        ids = [uuid.uuid4() for _ in range(30)]
        return await _intake(
            f"http://127.0.0.1:{port}", "tok", ids, 1, 30, path=lambda e: f"/e/{e}/reverse"
        )

    result, seen = asyncio.run(_serve(answer, run))
    found = cast(dict[str, object], result)
    assert found["ran_out_of_events"] is True  # 30 ids, well before 30 s
    assert found["requests"] == 30 == len(seen)
    assert found["statuses"] == {"202": 23, "429": 6, "ConnectionResetError": 1}
