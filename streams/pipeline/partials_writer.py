"""What a worker writes to Redis for the snapshot leader, every snapshot interval.

For each partition it owns: a share partition's partial (window totals at the leader's
clock), the chain summary and recent blocks, the latest price. Encoded by the models of
``streams.models`` that the leader decodes with.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from streams.core.blocks import BlockFacts
from streams.core.pools import ATTRIBUTION_CONFIDENCE, hashprice_sats_th_day
from streams.metrics import CONSUMER_LAG, EVENT_TIME_LAG
from streams.models.chain import COVERAGE_BLOCKS, RECENT_BLOCKS_KEPT, encode_chain_summary
from streams.models.partials import encode
from streams.pipeline.checkpoint_loop import CheckpointLoop
from streams.pipeline.state import ChainPartition, MarketPartition, ShareBatchPartition
from streams.rediskeys import RedisKeys
from streams.settings import Settings


def block_entry(block: BlockFacts) -> bytes:
    """One block as ``/v1/blocks`` serves it."""
    fees = block.fees_sat
    return orjson.dumps({
        "height": block.height, "hash": block.hash, "time": block.time, "pool": block.pool,
        "pool_slug": block.pool_slug, "difficulty": block.difficulty, "work": str(block.work),
        "subsidy_sat": block.subsidy_sat, "fees_sat": fees,
        "attribution_detail": block.attribution_detail,
        "attribution_confidence": ATTRIBUTION_CONFIDENCE[block.attribution_detail],
        "hashprice_sats_th_day": (hashprice_sats_th_day(block.subsidy_sat + fees,
                                                        block.difficulty)
                                  if fees is not None else None),
    })


class PartialsWriter:
    """Writes the owned partitions' partials to Redis in one transaction."""

    def __init__(self, settings: Settings, redis: aioredis.Redis,
                 shares: CheckpointLoop[ShareBatchPartition],
                 chain: CheckpointLoop[ChainPartition],
                 market: CheckpointLoop[MarketPartition]) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = RedisKeys(settings.redis_prefix)
        self.shares = shares
        self.chain = chain
        self.market = market

    async def write(self) -> None:
        for loop in (self.shares, self.chain, self.market):
            loop.restore_owned()
            CONSUMER_LAG.labels(loop.topic_name).set(loop.lag())
        # After Redis restarted empty, what the states hold is written again at once.
        chain_missing = not await self.redis.exists(self.keys.partial("blocks"))
        market_missing = not await self.redis.exists(self.keys.partial("market"))
        pipe = self.redis.pipeline(transaction=True)
        for _, chain in self.chain.owned_states():
            if chain.changed or chain_missing:
                self._write_chain(pipe, chain)
                chain.changed = False
        for _, price in self.market.owned_states():
            if price.changed or market_missing:
                pipe.set(self.keys.partial("market"), encode(price.partial()))
                price.changed = False
        clock_raw = await self.redis.get(self.keys.clock)
        self._write_shares(pipe, float(clock_raw) if clock_raw else 0.0)
        await pipe.execute()

    def _write_chain(self, pipe: Any, state: ChainPartition) -> None:
        """Replace the recent blocks and the chain summary (after new blocks or a restore)."""
        recent = state.chain.blocks(RECENT_BLOCKS_KEPT)
        pipe.delete(self.keys.blocks)
        if recent:
            pipe.zadd(self.keys.blocks, {block_entry(b): b.height for b in recent})
            EVENT_TIME_LAG.labels(self.settings.topics.blocks).set(time.time() - recent[-1].time)
        pipe.set(self.keys.partial("blocks"), encode_chain_summary(state.summary(COVERAGE_BLOCKS)))

    def _write_shares(self, pipe: Any, clock: float) -> None:
        """Every partition evaluates at the leader's clock, so the merged windows end at the
        same instant; before the first snapshot, at its own newest event."""
        settings = self.settings
        for partition, state in self.shares.owned_states():
            if not state.max_event_ts:
                continue
            t_eval = (clock or state.max_event_ts) - settings.settle_s
            partial = state.partial(t_eval, settings.windows_s).at_partition(
                partition, state.next_offset, self.shares.last_event_wall, time.time())
            pipe.set(self.keys.partial(partition), encode(partial))
            EVENT_TIME_LAG.labels(settings.topics.compacted_shares).set(
                time.time() - state.max_event_ts)
