"""`hashatlas simulate SCENARIO.yaml`: feed the pipeline a scripted world, and keep its truth."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.sim.scenario import Scenario

EXIT_BAD_INPUT = 2


def _start_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC unless it names a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither Unix seconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _duration(text: str) -> float:
    """Seconds from '90', '90s', '15m', '6h', '2d'."""
    from streams.sim.scenario import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not isinstance(value, float) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration ≥ 0")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `simulate`."""
    parser = subparsers.add_parser(
        "simulate",
        help="send a simulated scenario's shares, blocks and prices (with its truth)",
        description="Simulate a scenario (see scenarios/*.yaml) and produce its events to Kafka, "
        "or to a JSONL file with --dry-run. Events carry simulated timestamps starting now "
        "(or --start); --truth writes the ground truth for `hashatlas evaluate`.",
    )
    parser.add_argument("scenario", type=Path, metavar="SCENARIO.yaml")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument("--speed", type=_positive, default=1.0,
                        help="simulated seconds per wall-clock second (default 1)")
    pacing.add_argument("--as-fast-as-possible", action="store_true",
                        help="do not pace: send as fast as Kafka accepts")
    pacing.add_argument("--live", action="store_true",
                        help="backfill --backfill of history at once, then follow the wall clock "
                        "for the scenario's duration (or --duration)")
    parser.add_argument("--backfill", type=_duration, default=3600.0, metavar="DURATION",
                        help="with --live: history sent at once before real time (default 1h)")
    parser.add_argument("--step", type=_positive, default=None, metavar="S",
                        help="model step in seconds (default: the scenario's); a live feed is "
                        "at most one step behind the wall clock")
    parser.add_argument("--shock", metavar="REGION", default=None,
                        help="with --live: black out REGION (to a tenth) --shock-after seconds "
                        "after the backfill; 'largest' picks the scenario's largest region")
    parser.add_argument("--shock-after", type=_duration, default=120.0, metavar="DURATION",
                        help="with --shock: time from the end of the backfill (default 2m)")
    parser.add_argument("--duration", type=_positive, default=None, metavar="S",
                        help="simulated seconds to run (default: the scenario's duration)")
    parser.add_argument("--start", type=_start_time, default=None,
                        help="simulated start: Unix seconds or ISO 8601 (default: now)")
    parser.add_argument("--truth", type=Path, default=None, metavar="FILE.jsonl",
                        help="write the ground truth (header + one point per history step)")
    parser.add_argument("--dry-run", type=Path, default=None, metavar="FILE.jsonl",
                        help="write the events to this file instead of Kafka (no pacing)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: the scenario's)")
    parser.add_argument("--single-share-fraction", type=_fraction, default=None, metavar="F",
                        help="part of the shares sent as single `share` events instead of "
                        "batches (default: the scenario's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streams.settings import get_settings
    from streams.sim.run import run_simulation
    from streams.sim.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except OSError as exc:
        print(f"error: cannot read {args.scenario}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ScenarioError as exc:
        print(f"error: {args.scenario}: field {exc.field!r}: {exc.reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        scenario = _adjusted(scenario, args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    summary = run_simulation(
        scenario, get_settings(), start_ts=args.start, duration_s=args.duration,
        speed=None if args.as_fast_as_possible else args.speed, seed=args.seed,
        single_share_fraction=args.single_share_fraction, truth_path=args.truth,
        dry_run=args.dry_run, live_backfill_s=args.backfill if args.live else None,
    )
    print(f"hashatlas simulate {scenario.name}: {summary.line()}", file=sys.stderr)
    return 0


def _adjusted(scenario: Scenario, args: argparse.Namespace) -> Scenario:
    """The scenario with the command line's step and live shock."""
    from streams.sim.live import largest_region, with_blackout, with_step

    scenario = with_step(scenario, args.step)
    if args.shock is None:
        return scenario
    if not args.live:
        raise ValueError("--shock needs --live")
    if args.start is not None:
        raise ValueError("--start and --live exclude each other")
    region = largest_region(scenario) if args.shock == "largest" else args.shock.upper()
    print(f"hashatlas simulate: {region} blacked out to a tenth, {args.shock_after:g} s after "
          f"the {args.backfill:g} s backfill", file=sys.stderr)
    return with_blackout(scenario, region, args.backfill + args.shock_after)
