"""`hashatlas blocks describe FILE.jsonl`: what the pipeline would make of a file of block events.

Useful to check a block feed before pointing the pipeline at it: each good line prints its facts,
each bad line an error naming the line and field, and the exit code says whether any was bad.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from streams.commands.feeds import add_block_commands
from streams.contracts import InvalidEvent
from streams.core.blocks import (
    BlockFacts,
    PoolDirectory,
    describe_block,
    load_pool_directory,
)
from streams.core.pools import ATTRIBUTION_CONFIDENCE, hashprice_sats_th_day

DEFAULT_POOLS_FILE = Path(__file__).resolve().parents[1] / "data" / "pools-v2.json"
EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `blocks` and its `describe` subcommand."""
    blocks = subparsers.add_parser("blocks", help="inspect block events")
    actions = blocks.add_subparsers(dest="blocks_command", required=True)
    add_block_commands(actions)
    describe = actions.add_parser(
        "describe",
        help="print height, pool, difficulty, work, subsidy and fees of each block event",
        description="Read block events (one JSON object per line) and print one JSON object "
        "per block. Bad lines are reported on stderr; the exit code is 2 if any was bad.",
    )
    describe.add_argument(
        "file", type=Path, metavar="FILE.jsonl", help="block events, one JSON object per line"
    )
    describe.add_argument(
        "--pools",
        type=Path,
        default=DEFAULT_POOLS_FILE,
        metavar="FILE",
        help="pool list in pools-v2.json format (default: the shipped copy)",
    )
    describe.set_defaults(func=run_describe)


def facts_to_json(facts: BlockFacts) -> dict[str, Any]:
    return {
        "height": facts.height,
        "hash": facts.hash,
        "time": facts.time,
        "pool": facts.pool,
        "pool_slug": facts.pool_slug,
        "attribution": facts.attribution,
        "difficulty": facts.difficulty,
        "work": facts.work,
        "subsidy_sat": facts.subsidy_sat,
        "fees_sat": facts.fees_sat,
        "attribution_detail": facts.attribution_detail,
        "attribution_confidence": ATTRIBUTION_CONFIDENCE[facts.attribution_detail],
        "conflicting_pool_slug": facts.conflicting_pool_slug,
        # This block's subsidy + fees at its difficulty, as if every block of a day paid the same.
        "hashprice_sats_th_day": (
            hashprice_sats_th_day(facts.subsidy_sat + facts.fees_sat, facts.difficulty)
            if facts.fees_sat is not None else None),
    }


def _describe_line(line: str, pools: PoolDirectory) -> BlockFacts:
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidEvent("$", f"not valid JSON ({exc.msg})") from None
    if not isinstance(event, dict):
        raise InvalidEvent("$", "must be a JSON object")
    return describe_block(event, pools)


def run_describe(args: argparse.Namespace) -> int:
    try:
        pools = load_pool_directory(args.pools)
    except (OSError, ValueError) as exc:
        print(f"error: cannot use pool list {args.pools}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with open(args.file, encoding="utf-8") as handle:
            lines = handle.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    bad_lines = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            facts = _describe_line(line, pools)
        except InvalidEvent as exc:
            bad_lines += 1
            print(f"{args.file}:{number}: field {exc.field!r}: {exc.reason}", file=sys.stderr)
            continue
        print(json.dumps(facts_to_json(facts), ensure_ascii=False))
    return EXIT_BAD_INPUT if bad_lines else 0
