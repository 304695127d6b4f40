"""`hashatlas api [--host H] [--port P]`: serve the HTTP API with uvicorn (one process).

uvloop and httptools are used when installed (uvicorn's "auto"), and the per-request access log
is off unless asked for: at thousands of polls per second it costs more than the request itself,
and the Prometheus request metrics already count every answer by route and status.
"""

from __future__ import annotations

import argparse

from streams.settings import get_settings


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `api`. Settings are read when it runs, so a bad environment cannot break the
    parsing of other commands."""
    api = subparsers.add_parser(
        "api",
        help="serve the HTTP API (estimates, regions, history, blocks, alerts, SSE, metrics)",
        description="Serve the read-only HTTP API from what the pipeline wrote to Redis "
        "(HASHATLAS_REDIS_URL, HASHATLAS_REDIS_PREFIX).",
    )
    api.add_argument("--host", default=None,
                     help="address to listen on (default: the api_host setting, 127.0.0.1)")
    api.add_argument("--port", type=int, default=None,
                     help="port to listen on (default: the api_port setting, 8000)")
    api.add_argument("--access-log", action="store_true",
                     help="log every request (off by default; see the request metrics instead)")
    api.set_defaults(func=run_api)


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app

    settings = get_settings()
    host = settings.api_host if args.host is None else args.host
    port = settings.api_port if args.port is None else args.port
    uvicorn.run(create_app(settings), host=host, port=port, access_log=args.access_log,
                log_level="info", timeout_graceful_shutdown=5)
    return 0
