"""Request ids (api_stub.metrics.request_id): unique within a process and across processes."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from api_stub.metrics import request_id


def test_ids_are_32_hex_digits_and_never_repeat_across_threads() -> None:
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: request_id(), range(20_000)))
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_a_forked_child_counts_under_a_prefix_of_its_own() -> None:
    parent = request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next id and leave at once
        os.write(write, request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    # The same count would follow in both processes: only the prefix tells them apart.
    assert child[:16] != parent[:16]
    assert request_id()[:16] == parent[:16]
