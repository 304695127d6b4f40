"""The ``hashatlas`` command: one entry point for the stack, the pipeline, the API and the tools."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from api import command as api_command
from streams.allocator import reexec_with_jemalloc
from streams.commands import blocks as blocks_command
from streams.commands import cbeci as cbeci_command
from streams.commands import evaluate as evaluate_command
from streams.commands import feeds as feeds_command
from streams.commands import proxy as proxy_command
from streams.commands import simulate as simulate_command
from streams.commands import sites as sites_command
from streams.logs import limit_repeated_kafka_logs
from streams.settings import PROJECT_ROOT, get_settings


def _stack(args: argparse.Namespace) -> int:
    from streams import stack, topics

    settings = get_settings()
    try:
        if args.action == "install":
            stack.stack_install(settings, with_prometheus=args.prometheus,
                                     with_browser=args.browser)
        elif args.action == "up":
            stack.stack_up(settings, with_prometheus=args.prometheus)
        elif args.action == "down":
            stack.stack_down(settings)
        elif args.action == "status":
            status = stack.stack_status(settings)
            print(json.dumps(status, indent=2))
            return 0 if all(entry["answering"] for entry in status.values()) else 1
        elif args.action == "topics":
            import asyncio

            created = asyncio.run(topics.create_topics(settings))
            print("created: " + (", ".join(created) or "nothing (all present)"))
    except stack.StackError as exc:
        print(f"hashatlas stack {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _use_configured_allocator(allocator: str) -> None:
    """Re-execute with jemalloc preloaded when configured and installed (see streams.allocator);
    says so on stderr when the process stays on glibc's malloc."""
    if allocator == "jemalloc":
        used = reexec_with_jemalloc()
        if used != "jemalloc":
            print(f"hashatlas: allocator {used}", file=sys.stderr)


def _compactor(args: argparse.Namespace) -> int:
    settings = get_settings()
    _use_configured_allocator(settings.compactor_allocator)
    from streams.metrics import serve_metrics
    from streams.pipeline.compactor import run_compactor

    serve_metrics(settings.metrics_port_base if args.metrics_port is None else args.metrics_port,
                  settings.metrics_host)
    run_compactor(settings, args.instance)
    return 0


def _worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    _use_configured_allocator(settings.allocator)
    from streams.metrics import serve_metrics
    from streams.pipeline.worker import run_worker

    serve_metrics(settings.metrics_port_base + 1 if args.metrics_port is None
                  else args.metrics_port, settings.metrics_host)
    run_worker(settings, args.loglevel)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.demo import DemoOptions, run_demo

    return run_demo(get_settings(), DemoOptions(
        scenario=args.scenario, backfill_s=args.backfill, step_s=args.step,
        duration_s=args.duration, shock_region=args.shock))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashatlas",
        description="Real-time estimates of Bitcoin hashrate and electricity by region.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="run the local Kafka + Redis stack")
    stack.add_argument("action", choices=["install", "up", "down", "status", "topics"],
                       help="install: fetch Kafka and Debian's Redis (the tests start their own)")
    stack.add_argument("--prometheus", action="store_true", help="also install Prometheus")
    stack.add_argument("--browser", action="store_true",
                       help="install: also Debian's chromium and chromedriver (map tests)")
    stack.set_defaults(func=_stack)

    compactor = sub.add_parser("compactor", help="sum single shares into share_batch events")
    compactor.add_argument("--instance", help="stable id for the transactional producer")
    compactor.add_argument("--metrics-port", type=int, default=None,
                           help="Prometheus port (default: metrics_port_base; 0 disables)")
    compactor.set_defaults(func=_compactor)

    worker = sub.add_parser("worker", help="run one Faust worker (any number may run)")
    worker.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info",
                                                                "debug"])
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus port (default: metrics_port_base + 1; 0 disables)")
    worker.set_defaults(func=_worker)

    demo = sub.add_parser("demo", help="stack + pipeline + API + simulated feed, until Ctrl-C")
    demo.add_argument("--scenario", type=Path, default=PROJECT_ROOT / "scenarios" / "steady.yaml")
    demo.add_argument("--backfill", type=float, default=3600.0, metavar="S",
                      help="seconds of history sent at once before real time (default 3600)")
    demo.add_argument("--step", type=float, default=3.0, metavar="S",
                      help="simulator step: the feed is at most this far behind (default 3)")
    demo.add_argument("--duration", type=float, default=None,
                      help="seconds to run in real time (default: the scenario's duration)")
    demo.add_argument("--shock", nargs="?", const="largest", default=None, metavar="REGION",
                      help="black out REGION (default: the largest) 2 min after the backfill, "
                      "to see a regional alert")
    demo.set_defaults(func=_demo)

    for module in (api_command, blocks_command, cbeci_command, evaluate_command, feeds_command,
                   proxy_command, simulate_command, sites_command):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    limit_repeated_kafka_logs()  # a broker outage would log one line per retry per client
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
