"""`hashatlas blocks follow|replay` and `hashatlas prices follow`: the feeds as commands.

`blocks follow` follows a Bitcoin node (JSON-RPC: Core or btcd) or an Esplora API and produces
`block` events to the blocks topic; `blocks replay` produces a recorded file of block events;
`prices follow` polls a BTC/USD ticker into the market topic. Kafka settings and topic names come
from the usual ``HASHATLAS_*`` settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aiokafka.errors import KafkaError

from streams.feeds import KafkaEventSink, describe_error
from streams.feeds import blocks as block_feed
from streams.feeds import prices as price_feed
from streams.settings import get_settings

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
RPC_PASSWORD_ENV = "HASHATLAS_RPC_PASSWORD"
log = logging.getLogger("hashatlas.feeds")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the top-level `prices` command with its `follow` subcommand."""
    prices = subparsers.add_parser("prices", help="BTC/USD price feed")
    actions = prices.add_subparsers(dest="prices_command", required=True)
    follow = actions.add_parser(
        "follow",
        help="poll a BTC/USD ticker and produce price events to the market topic",
        description="Poll a JSON ticker every --interval seconds and produce "
        '{"type": "price", "ts", "btc_usd", "source"} events. Failed polls are logged and '
        "retried with a doubling delay (at most --max-backoff); they are never produced.",
    )
    follow.add_argument("--url", required=True, help="ticker URL answering JSON")
    follow.add_argument(
        "--json-path", required=True, metavar="PATH",
        help="dotted path to the price, e.g. data.amount, bitcoin.usd, result.XXBTZUSD.c.0",
    )
    follow.add_argument("--interval", type=_positive_float, default=price_feed.DEFAULT_INTERVAL_S,
                        metavar="S", help="seconds between polls (default: %(default)s)")
    follow.add_argument("--max-backoff", type=_positive_float,
                        default=price_feed.DEFAULT_MAX_BACKOFF_S, metavar="S",
                        help="longest wait after repeated failures (default: %(default)s)")
    follow.add_argument("--source", help="source name in the events (default: the URL's host)")
    follow.set_defaults(func=run_prices_follow)


def add_block_commands(
    blocks_sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `follow` and `replay` to the existing `blocks` command's subcommands."""
    follow = blocks_sub.add_parser(
        "follow",
        help="follow a Bitcoin node or Esplora API and produce block events",
        description="Backfill the last --backfill blocks, then poll for new tips and produce "
        "block events keyed by height. A reorg re-emits the new branch from the fork point.",
    )
    source = follow.add_mutually_exclusive_group(required=True)
    source.add_argument("--rpc-url", help="JSON-RPC URL of Bitcoin Core or btcd, "
                        "e.g. http://127.0.0.1:8332")
    source.add_argument("--esplora-url", help="Esplora/mempool REST base, "
                        "e.g. https://mempool.space/api")
    follow.add_argument("--rpc-user", help="RPC user name")
    follow.add_argument("--rpc-password", default=os.environ.get(RPC_PASSWORD_ENV),
                        help=f"RPC password (default: ${RPC_PASSWORD_ENV}, which keeps it out of "
                        "the process list)")
    follow.add_argument("--rpc-cookie", type=Path, metavar="FILE",
                        help="Bitcoin Core's .cookie file instead of user and password")
    follow.add_argument("--backfill", type=_positive_int, default=block_feed.DEFAULT_BACKFILL,
                        metavar="N", help="blocks to emit at start (default: %(default)s)")
    follow.add_argument("--poll-interval", type=_positive_float,
                        default=block_feed.DEFAULT_POLL_INTERVAL_S, metavar="S",
                        help="seconds between tip checks (default: %(default)s)")
    follow.set_defaults(func=run_blocks_follow)

    replay = blocks_sub.add_parser(
        "replay",
        help="produce a recorded file of block events to the blocks topic",
        description="Validate each line (one block event as JSON) and produce the good ones "
        "keyed by height. Bad lines are reported on stderr; the exit code is 2 if any was bad.",
    )
    replay.add_argument("file", type=Path, metavar="FILE.jsonl", help="block events, one per line")
    replay.add_argument("--speed", type=_positive_float, default=None, metavar="X",
                        help="pace by block times divided by X (default: as fast as possible)")
    replay.set_defaults(func=run_blocks_replay)


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll drowns the rest


def _rpc_credentials(args: argparse.Namespace) -> block_feed.RpcCredentials:
    if args.rpc_cookie is not None and args.rpc_user is not None:
        raise ValueError("give either --rpc-cookie or --rpc-user/--rpc-password, not both")
    if args.rpc_user is None and args.rpc_password is not None and args.rpc_cookie is None:
        raise ValueError(f"--rpc-password (or ${RPC_PASSWORD_ENV}) needs --rpc-user")
    return block_feed.RpcCredentials(args.rpc_user, args.rpc_password, args.rpc_cookie)


async def _until_signalled(work: Awaitable[None]) -> None:
    """Run a feed until SIGINT or SIGTERM, then cancel it mid-poll if need be.

    Cancelling (rather than waiting for the poll to end: a backfill can take minutes) lets the
    caller's ``async with`` close the producer and HTTP client cleanly. Nothing is lost: a block
    or price counts as delivered only once Kafka acknowledged it.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        log.info("feed stopped by signal")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def _follow_blocks(
    args: argparse.Namespace, credentials: block_feed.RpcCredentials | None
) -> None:
    settings = get_settings()
    topic = settings.topics.blocks
    async with KafkaEventSink(settings) as sink, block_feed.http_client() as client:
        source: block_feed.BlockSource
        if credentials is not None:
            source = block_feed.BitcoinRpcSource(client, args.rpc_url, credentials)
        else:
            source = block_feed.EsploraSource(client, args.esplora_url)

        async def emit(event: dict[str, Any]) -> None:
            await sink.send(topic, str(event["height"]), event)

        await _until_signalled(block_feed.follow_blocks(
            source, emit, backfill=args.backfill, poll_interval_s=args.poll_interval
        ))


def run_blocks_follow(args: argparse.Namespace) -> int:
    _configure_logging()
    if args.esplora_url is not None and (
        args.rpc_user is not None or args.rpc_cookie is not None
    ):
        print("error: --rpc-user/--rpc-cookie apply to --rpc-url only", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        credentials = _rpc_credentials(args) if args.rpc_url is not None else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        asyncio.run(_follow_blocks(args, credentials))
    except block_feed.FeedAuthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KafkaError as exc:
        print(f"error: Kafka: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


async def _replay(path: Path, speed: float | None) -> tuple[int, int]:
    settings = get_settings()
    topic = settings.topics.blocks
    with open(path, encoding="utf-8") as lines:
        async with KafkaEventSink(settings) as sink:

            async def emit(event: dict[str, Any]) -> None:
                await sink.send(topic, str(event["height"]), event)

            return await block_feed.replay_blocks(
                lines, emit, speed=speed, errors=sys.stderr, name=str(path)
            )


def run_blocks_replay(args: argparse.Namespace) -> int:
    try:
        sent, bad = asyncio.run(_replay(args.file, args.speed))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KafkaError as exc:
        print(f"error: Kafka: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    print(f"{args.file}: produced {sent} block event(s), {bad} bad line(s)", file=sys.stderr)
    return EXIT_BAD_INPUT if bad else 0


async def _follow_prices(args: argparse.Namespace, path: tuple[str, ...], source: str) -> None:
    settings = get_settings()
    topic = settings.topics.market
    async with KafkaEventSink(settings) as sink, price_feed.http_client() as client:

        async def emit(event: dict[str, Any]) -> None:
            await sink.send(topic, source, event)

        await _until_signalled(price_feed.follow_prices(
            client, args.url, path, emit, source=source, interval_s=args.interval,
            max_backoff_s=args.max_backoff,
        ))


def run_prices_follow(args: argparse.Namespace) -> int:
    _configure_logging()
    try:
        path = price_feed.parse_json_path(args.json_path)
    except ValueError as exc:
        print(f"error: --json-path: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    source = args.source or urlparse(args.url).hostname
    if not source:
        print(f"error: --url {args.url!r} has no host", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        asyncio.run(_follow_prices(args, path, source))
    except KafkaError as exc:
        print(f"error: Kafka: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0
