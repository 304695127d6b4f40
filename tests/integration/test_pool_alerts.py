"""The leader publishes `pool_divergence` alerts and keeps its luck memory in Redis (#15).

The snapshot publisher runs against a real Redis holding what the workers write (share partials
and the chain summary); Kafka is replaced by a list that records what would be sent. A proxy
sees half of Foundry (shares 15 % of the network, blocks 30 %): the alert must fire, reach the
alerts topic and Redis, and a new leader must take over the memory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from streams.core.blocks import BestChain, BlockFacts
from streams.core.electricity import load_hardware
from streams.core.shifts import ShiftDetector
from streams.core.snapshot import EstimationConfig
from streams.models.chain import encode_chain_summary
from streams.pipeline.publisher import SnapshotPublisher
from streams.pipeline.state import ChainPartition
from streams.rediskeys import RedisKeys
from streams.settings import Settings

NETWORK_HS = 200e18
DIFFICULTY = NETWORK_HS * 600 / 2**32
WINDOW = 900.0
PATTERN = ["foundry-usa"] * 3 + ["antpool"] * 2 + ["f2pool"] * 3 + ["unknown"] * 2


def block(i: int, t0: float) -> BlockFacts:
    pool = PATTERN[i % len(PATTERN)]
    return BlockFacts(
        height=840_000 + i, hash=f"{i:064x}", prev_hash=f"{i - 1:064x}" if i else None,
        time=t0 + 600.0 * i, bits="17034219", pool=pool, pool_slug=pool, attribution="feed",
        difficulty=DIFFICULTY, work=round(DIFFICULTY * 2**32), subsidy_sat=312_500_000,
        fees_sat=0, coinbase_value_sat=312_500_000, attribution_detail="address")


def share_row(pool: str, region: str, hashrate: float) -> list[Any]:
    dsum = hashrate * WINDOW / 2**32
    return [pool, region, dsum / 2**20, dsum, dsum * 2**20, WINDOW, 2.0**20]


async def test_half_seen_pool_fires_pool_divergence_and_memory_survives_the_leader(
    redis_url: str,
) -> None:
    settings = Settings(redis_url=redis_url, redis_prefix="pooltest", history_step_s=60.0)
    keys = RedisKeys(settings.redis_prefix)
    config = EstimationConfig(headline_window_s=WINDOW, hardware=load_hardware(
        Path(__file__).resolve().parents[2] / "streams" / "data" / "hardware.csv"))
    client = aioredis.Redis.from_url(redis_url)
    sent: list[tuple[str, dict[str, Any]]] = []

    async def send(topic: str, body: bytes) -> None:
        sent.append((topic, orjson.loads(body)))

    # Leader state present: the publisher takes over instead of rebuilding from Kafka.
    await client.set(keys.leader, orjson.dumps({
        "detector": ShiftDetector().to_state(), "last_step": None,
        "threshold_j_gh": None, "threshold_at": None}))
    t0 = time.time() - 600.0 * 1400
    chain = BestChain()
    state = ChainPartition(chain=chain, pools=None)  # type: ignore[arg-type]
    for i in range(1000):
        chain.add(block(i, t0))
    rows = [share_row("foundry-usa", "US", 0.15 * NETWORK_HS),
            share_row("antpool", "CN", 0.2 * NETWORK_HS)]

    async def step(publisher: SnapshotPublisher, i: int) -> dict[str, Any] | None:
        t_eval = t0 + 600.0 * i + 1.0
        await client.mset({
            keys.partial(0): orjson.dumps({
                "t_eval": t_eval, "max_event_ts": t_eval, "windows": {"900": rows},
                "partition": 0, "next_offset": i, "last_event_wall": time.time()}),
            keys.partial("blocks"): encode_chain_summary(state.summary(2016)),
            keys.partial("market"): orjson.dumps({"btc_usd": 60_000.0, "ts": t_eval,
                                                  "source": "test"}),
        })
        return await publisher.publish()

    leader = SnapshotPublisher(settings, config, client, send)
    fired_at = None
    for i in range(999, 1400):
        if i >= 1000:
            chain.add(block(i, t0))
        await step(leader, i)
        if fired_at is None and any(body.get("type") == "pool_divergence"
                                    for _, body in sent):
            fired_at = i
            break
    assert fired_at is not None and fired_at - 1000 < 300, fired_at
    (topic, alert), = [(t, b) for t, b in sent if b.get("type") == "pool_divergence"]
    assert topic == settings.topics.alerts
    assert alert["pool"] == "foundry-usa" and alert["state"] == "firing"
    assert alert["direction"] == "blocks_above_shares" and alert["luck"] > 1.5
    stored = [orjson.loads(r) for r in await client.zrange(keys.alerts, 0, -1)]
    assert [a["id"] for a in stored if a["type"] == "pool_divergence"] == [alert["id"]]
    snapshot = orjson.loads(await client.hget(keys.snapshot, "json"))
    assert snapshot["pools"]["diverging"][0]["pool"] == "foundry-usa"
    history = await client.zrange(keys.history("pool:foundry-usa"), 0, -1)
    assert history and orjson.loads(history[-1])["status"] == "diverging"

    # A new leader (another worker) takes the luck memory over from Redis: no second firing.
    successor = SnapshotPublisher(settings, config, client, send)
    chain.add(block(fired_at + 1, t0))
    before = len(sent)
    await step(successor, fired_at + 1)
    assert "foundry-usa" in successor.memory.pools.detector.active
    assert successor.memory.pools.ledger.expected
    assert not [b for _, b in sent[before:] if b.get("type") == "pool_divergence"]
    await client.aclose()
