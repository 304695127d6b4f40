"""The Faust worker: one checkpointed agent per input (``share-batches``, ``blocks``, ``market``),
the timers that checkpoint and write partials, and the snapshot leader.

Each agent runs the same loop (``streams.pipeline.checkpoint_loop``): events at or past their
partition's next offset are applied, and Faust never commits an offset a flushed checkpoint does
not cover. Each worker writes its partitions' partials to Redis; the leader merges them (regional
shares need every pool) and publishes the snapshot.
"""

from __future__ import annotations

import logging
import sys

import faust
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.core.blocks import load_pool_directory
from streams.metrics import report_malloc
from streams.pipeline.estimation import DATA_DIR, estimation_config
from streams.pipeline.faust_app import checkpointed_input, connect_rebalances, new_faust_app
from streams.pipeline.faust_compat import recovery_remaining
from streams.pipeline.outbox import Outbox
from streams.pipeline.ownership import RecoveryWatchdog
from streams.pipeline.partials_writer import PartialsWriter
from streams.pipeline.publisher import SnapshotPublisher
from streams.pipeline.state import ChainPartition, MarketPartition, ShareBatchPartition
from streams.settings import Settings

log = logging.getLogger("hashatlas.worker")

TAKE_MAX = 10_000  # share batches per take; blocks and prices: SMALL_TAKE_MAX
SMALL_TAKE_MAX = 1000
MALLOC_REPORT_S = 30.0


def create_app(settings: Settings) -> faust.App:
    """The Faust app with its agents, timers and the snapshot leader."""
    app = new_faust_app(settings)
    topics, counts = settings.topics, settings.partitions
    pools = load_pool_directory(DATA_DIR / "pools-v2.json")
    shares = checkpointed_input(app, settings, topics.compacted_shares, counts.compacted_shares,
                                lambda raw: ShareBatchPartition.restore(raw, settings),
                                ShareBatchPartition.apply, TAKE_MAX)
    chain = checkpointed_input(app, settings, topics.blocks, counts.blocks,
                               lambda raw: ChainPartition.restore(raw, pools),
                               ChainPartition.apply, SMALL_TAKE_MAX)
    market = checkpointed_input(app, settings, topics.market, counts.market,
                                MarketPartition.restore, MarketPartition.apply, SMALL_TAKE_MAX)
    loops = [shares, chain, market]
    connect_rebalances(app, loops)
    watchdog = RecoveryWatchdog(settings.recovery_stall_s, lambda: recovery_remaining(app),
                                [loop.ownership for loop in loops])
    redis = aioredis.Redis.from_url(settings.redis_url)
    partials = PartialsWriter(settings, redis, shares, chain, market)
    outbox = Outbox(lambda topic, body: app.producer.send(topic, None, body, None, None, None),
                    capacity=settings.leader_outbox_capacity, latest_only=[topics.estimates])
    publisher = SnapshotPublisher(settings, estimation_config(settings), redis, outbox.send)

    async def crash_if_recovery_stalls() -> None:
        if (stalled := watchdog.stalled()) is not None:
            log.error("changelog recovery has not moved for %.0f s (%d changes left): "
                      "stopping this worker so that others take its partitions", *stalled)
            await app.crash(RuntimeError("changelog recovery stalled"))

    async def checkpoint_quiet_partitions() -> None:
        for loop in loops:
            if loop.started:
                await loop.checkpoint_due()
                await loop.seek_pending_rereads()

    async def write_partials() -> None:
        """Publish what this worker's partitions hold, for the leader to merge."""
        try:
            await partials.write()
        except (RedisError, OSError) as exc:  # Redis away: state is safe, retry next tick
            log.warning("cannot write partials to Redis (%s); retrying", exc)

    async def publish_snapshot() -> None:
        try:
            await publisher.publish()
        except Exception:
            log.exception("snapshot publication failed; retrying at the next tick")

    async def report_and_trim_malloc() -> None:
        report_malloc(trim=settings.malloc_trim)

    app.timer(interval=5.0)(crash_if_recovery_stalls)
    app.timer(interval=MALLOC_REPORT_S)(report_and_trim_malloc)
    app.timer(interval=settings.checkpoint_interval_s)(checkpoint_quiet_partitions)
    app.timer(interval=settings.snapshot_interval_s)(write_partials)
    app.timer(interval=settings.snapshot_interval_s, on_leader=True)(publish_snapshot)
    return app


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run one Faust worker process (any number may run in the same group)."""
    app = create_app(settings)
    sys.argv = ["hashatlas", "worker", "-l", loglevel, "--without-web"]
    app.main()
