"""`hashatlas evaluate`: how close the pipeline came to a simulation's truth.

Two modes: ``--truth FILE --from-redis|--from-api URL`` compares what a live pipeline published
with a simulation's truth; ``--scenario FILE --worlds N`` runs N seeds of a scenario offline
through the workers' code (``streams.sim.worlds``) and prints calibration tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `evaluate`."""
    parser = subparsers.add_parser(
        "evaluate",
        help="compare the pipeline's estimates and alerts with a simulation's truth",
        description="Read the truth written by `hashatlas simulate --truth` and the estimates "
        "the pipeline published for the same span (from Redis or the HTTP API); print share and "
        "hashrate errors per region, detection delay per shock, misses and false alarms. "
        "Or, with --scenario, run --worlds seeds of a scenario offline (no Kafka, no Redis) "
        "through the workers' code and print how often every served interval held the truth.",
    )
    parser.add_argument("--truth", type=Path, default=None, metavar="FILE.jsonl")
    parser.add_argument("--scenario", type=Path, default=None, metavar="FILE.yaml",
                        help="offline mode: the scenario to run many worlds of")
    parser.add_argument("--worlds", type=int, default=None, metavar="N",
                        help="offline mode: number of independent worlds (seeds), default 100")
    parser.add_argument("--seed", type=int, default=1, metavar="S",
                        help="offline mode: base seed (world i uses a seed derived from S and i)")
    parser.add_argument("--detect-worlds", type=int, default=0, metavar="K",
                        help="offline mode: also run K worlds end to end with a snapshot every "
                        "history step into the shift detector (delay, misses, false alarms)")
    parser.add_argument("--detect-first", type=int, default=0, metavar="I",
                        help="offline mode: the tracked worlds are I … I+K−1 (default 0), to "
                        "split a long detection run into parts")
    parser.add_argument("--track-hours", type=float, default=12.0, metavar="H",
                        help="offline mode: longest span a detection world tracks (default 12)")
    parser.add_argument("--lead-hours", type=float, default=2.0, metavar="H",
                        help="offline mode: the detector starts H hours before the first shock "
                        "(default 2)")
    parser.add_argument("--partitions", type=int, default=2, metavar="P",
                        help="offline mode: share partitions the pools are spread over")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-redis", action="store_true",
                        help="read history and alerts from Redis (HASHATLAS_REDIS_URL, _PREFIX)")
    source.add_argument("--from-api", metavar="URL",
                        help="read them from the HTTP API at URL (e.g. http://127.0.0.1:8000)")
    parser.add_argument("--intervals-from-kafka", action="store_true",
                        help="also read every snapshot on the estimates topic to measure how "
                        "often the 95 %% intervals held the truth")
    parser.add_argument("--warmup", type=float, default=None, metavar="S",
                        help="seconds after the start left out (default 900: windows fill up)")
    parser.add_argument("--min-change-pp", type=float, default=None, metavar="PP",
                        help="smallest true change of a country's share an alert must catch "
                        "(default 1.0)")
    parser.add_argument("--json", type=Path, nargs="?", const=Path("-"), default=None,
                        metavar="OUT.json", help="also write the report as JSON to OUT.json "
                        "(with --scenario and no file: print JSON instead of the tables)")
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                        help="plot truth vs estimate (needs matplotlib)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.scenario is not None:
        return run_worlds(args)
    if args.truth is None or not (args.from_redis or args.from_api):
        print("error: give --truth FILE with --from-redis or --from-api URL, "
              "or --scenario FILE --worlds N", file=sys.stderr)
        return EXIT_BAD_INPUT
    from streams.settings import get_settings
    from streams.sim import evaluate as ev

    settings = get_settings()
    try:
        truth = ev.load_truth(args.truth)
    except (OSError, ValueError) as exc:
        print(f"error: cannot use truth {args.truth}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    start, end = truth.start, truth.end
    try:
        if args.from_redis:
            history, alerts = ev.read_from_redis(settings.redis_url, settings.redis_prefix,
                                                 start, end)
        else:
            series = [ev.NETWORK, *truth.shares]
            history, alerts = ev.read_from_api(args.from_api, series, start, end,
                                               step_s=settings.history_step_s)
    except Exception as exc:  # any reader failure is reported, not a traceback
        print(f"error: cannot read the estimates: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    snapshots = None
    if args.intervals_from_kafka:
        from streams.kafka import client_options

        snapshots = asyncio.run(ev.read_estimates_topic(
            client_options(settings), settings.topics.estimates, start, end))
    options = {}
    if args.warmup is not None:
        options["warmup_s"] = args.warmup
    if args.min_change_pp is not None:
        options["min_change_pp"] = args.min_change_pp
    if args.json == Path("-"):
        print("error: --json needs a file name here", file=sys.stderr)
        return EXIT_BAD_INPUT
    report = ev.evaluate(truth, history, alerts, snapshots, **options)
    print(ev.format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(ev.report_json(report), indent=2), encoding="utf-8")
    if args.plot is not None:
        try:
            ev.write_plot(report, truth, history, args.plot)
        except ImportError:
            print("warning: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
    return 0


def run_worlds(args: argparse.Namespace) -> int:
    """Offline mode: calibration over many worlds of one scenario."""
    from streams.settings import get_settings
    from streams.sim import worlds
    from streams.sim.scenario import ScenarioError, load_scenario

    if args.truth is not None or args.from_redis or args.from_api:
        print("error: --scenario runs offline; it takes no --truth, --from-redis or --from-api",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        scenario = load_scenario(args.scenario)
    except (OSError, ScenarioError) as exc:
        print(f"error: cannot use scenario {args.scenario}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    count = 100 if args.worlds is None else args.worlds
    if count < 1 or args.detect_worlds < 0 or args.detect_first < 0 or args.partitions < 1:
        print("error: --worlds and --partitions must be ≥ 1, --detect-worlds and "
              "--detect-first ≥ 0",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    report = worlds.evaluate_worlds(scenario, count, seed=args.seed, settings=get_settings(),
                                    partitions=args.partitions,
                                    detect_worlds=args.detect_worlds,
                                    detect_first=args.detect_first,
                                    max_track_s=args.track_hours * 3600.0,
                                    lead_s=args.lead_hours * 3600.0)
    body = json.dumps(worlds.worlds_report_json(report), indent=2)
    if args.json == Path("-"):
        print(body)
        return 0
    print(worlds.format_worlds_report(report))
    if args.json is not None:
        args.json.write_text(body, encoding="utf-8")
    return 0
