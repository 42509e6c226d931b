"""`reversals api --workers N` (N > 1): uvicorn's supervisor and N worker processes.

Run as `python -m api_stub.serve --host H --port P --workers N` (worker.cli builds the
command; `--factory` names the service's app unless the bench serves its intake
floor, bench.floor). Unlike `python -m uvicorn`, it configures the service's logging
before uvicorn starts, so the supervisor's own lines (started, worker restarted,
stopping) are JSON like every other line (worker.logs); each worker configures it
again when it builds the app (api_stub.app.app_factory). It also makes the directory
the workers count their Prometheus metrics in (api_stub.multiprocess), before any of
them imports prometheus_client.
"""

from __future__ import annotations

import argparse

import uvicorn

from api_stub.multiprocess import prepare_multiprocess
from worker.cli import APP_FACTORY
from worker.logs import configure
from worker.settings import get_settings


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
    uvicorn.run(
        args.factory,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_config=None,  # worker.logs' handlers, not uvicorn's plain text
    )


if __name__ == "__main__":
    main()
