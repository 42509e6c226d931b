"""`reversals api --workers N` (N > 1): uvicorn's supervisor and N worker processes.

Run as `python -m api_stub.serve --host H --port P --workers N` (worker.cli builds the
command; `--factory` names the service's app unless the bench serves its intake
floor, bench.floor). Unlike `python -m uvicorn`, it configures the service's logging
before uvicorn starts, so the supervisor's own lines (started, worker restarted,
stopping) are JSON like every other line (worker.logs); each worker configures it
again when it builds the app (api_stub.app.app_factory). It also makes the directory
the workers count their Prometheus metrics in (api_stub.multiprocess), before any of
them imports prometheus_client.

On Linux the supervisor accepts every connection and hands each to the next worker
in turn (api_stub.handoff), so that a client's keep-alive connections are split
evenly between the workers.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from api_stub.multiprocess import prepare_multiprocess
from worker.cli import APP_FACTORY
from worker.logs import configure
from worker.settings import get_settings

STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot bind (uvicorn.server)
logger = logging.getLogger("uvicorn.error")  # where uvicorn logs its own start


def hold(host: str, port: int) -> socket.socket:
    """The supervisor's socket bound to host:port (port 0: a free port)."""
    family, _, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


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
        # Connections are handed over on Linux (a Unix socket's abstract name,
        # SCM_RIGHTS); elsewhere uvicorn's one shared socket.
        uvicorn.run(args.factory, **options)
        return
    from api_stub.handoff import LOOP, Acceptor

    config = uvicorn.Config(args.factory, loop=LOOP, **options)
    try:
        sock = hold(args.host, args.port)
        sock.listen(config.backlog)
    except OSError as exc:
        logger.error("cannot bind %s:%s: %s", args.host, args.port, exc)
        sys.exit(STARTUP_FAILURE)
    logger.info(
        "Uvicorn running on http://%s:%d, %d workers, connections handed to each in turn",
        args.host,
        sock.getsockname()[1],
        args.workers,
    )
    acceptor = Acceptor(sock)
    acceptor.start()
    Multiprocess(config, sockets=[acceptor.registry]).run()


if __name__ == "__main__":
    main()
