"""`reversals api --workers N` (N > 1): uvicorn's supervisor and N worker processes.

Run as `python -m api_stub.serve --host H --port P --workers N` (worker.cli builds the
command; `--factory` names the service's app unless the bench serves its intake
floor, bench.floor). Unlike `python -m uvicorn`, it configures the service's logging
before uvicorn starts, so the supervisor's own lines (started, worker restarted,
stopping) are JSON like every other line (worker.logs); each worker configures it
again when it builds the app (api_stub.app.app_factory). It also makes the directory
the workers count their Prometheus metrics in (api_stub.multiprocess), before any of
them imports prometheus_client.

On Linux each worker listens on a socket of its own (`SO_REUSEPORT`), so that the
kernel spreads new connections over the workers (`ReusePort`).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Any, TypeVar

import uvicorn
from uvicorn.supervisors import Multiprocess

from api_stub.multiprocess import prepare_multiprocess
from worker.cli import APP_FACTORY
from worker.logs import configure
from worker.settings import get_settings

STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot bind (uvicorn.server)
_Socket = TypeVar("_Socket", bound=socket.socket)
logger = logging.getLogger("uvicorn.error")  # where uvicorn logs its own start


class ReusePort(socket.socket):
    """The supervisor's hold on the address; each worker gets a listening socket of its own.

    uvicorn's supervisor binds one socket and hands it to every worker, all accepting
    from one queue. Linux then wakes the most recently idle worker first, which accepts
    every connection waiting: a client opening its keep-alive connections at once (a
    proxy, a load generator) lands most of them, at times all 32, on one worker, whose
    requests wait on one core while the other idles (measured in the bench's intake:
    splits of 22/10, 24/8 and 32/0). With `SO_REUSEPORT`, each worker's socket has its
    own queue and the kernel picks one by a hash of the connection's addresses.

    This socket is bound, so that the port is taken and a bad address fails at once,
    and never listens, so that no connection waits on it. uvicorn pickles its sockets
    to each worker it starts, first or restarted; this one arrives as a new socket
    bound to the same address (`_listener`), on which the worker's server listens.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_listener, (self.family, self.getsockname()))


def _listener(family: int, address: tuple[Any, ...]) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that name it
    # (uvloop, the default loop here, sets it on every TCP connection anyway).
    return _bound(socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP), address)


def _bound(sock: _Socket, address: tuple[Any, ...]) -> _Socket:
    """`sock` bound to `address` as a member of its SO_REUSEPORT group."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def hold(host: str, port: int) -> ReusePort:
    """The supervisor's socket on host:port (port 0: a free port, the same for every worker)."""
    family, _, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return _bound(ReusePort(family, socket.SOCK_STREAM, proto), address)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m api_stub.serve")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--factory", default=APP_FACTORY)
    args = parser.parse_args(argv)
    settings = get_settings()
    configure(settings.log_level)
    if args.workers > 1:
        prepare_multiprocess(settings.state_dir)
    options: dict[str, Any] = {
        "factory": True,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "access_log": False,
        "log_config": None,  # worker.logs' handlers, not uvicorn's plain text
    }
    if args.workers == 1 or not sys.platform.startswith("linux"):
        # Elsewhere SO_REUSEPORT does not spread connections (on macOS the last
        # socket bound takes them all): uvicorn's one shared socket.
        uvicorn.run(args.factory, **options)
        return
    config = uvicorn.Config(args.factory, **options)
    try:
        sock = hold(args.host, args.port)
    except OSError as exc:
        logger.error("cannot bind %s:%s: %s", args.host, args.port, exc)
        sys.exit(STARTUP_FAILURE)
    logger.info(
        "Uvicorn running on http://%s:%d, %d workers with a socket each (SO_REUSEPORT)",
        args.host,
        sock.getsockname()[1],
        args.workers,
    )
    Multiprocess(config, sockets=[sock]).run()


if __name__ == "__main__":
    main()
