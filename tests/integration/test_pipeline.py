"""The live pipeline on the real Kafka and Redis: estimates equal the core's on the same events,
1 worker equals 2, a SIGKILLed worker loses nothing and counts nothing twice, real blocks are
attributed, malformed input is dead-lettered and counted."""

from __future__ import annotations

import asyncio
import base64
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from streams.pipeline.compactor import ShareCompactor
from streams.rediskeys import RedisKeys
from streams.settings import Settings
from tests.conftest import free_port
from tests.integration.conftest import consume_all, produce
from tests.integration.pipeline_helpers import (
    Worker,
    assert_matches_core,
    core_regional_sample,
    data_ends,
    offsets_reached,
    produce_keyed,
    share_batches,
    wait_for_snapshot,
)


async def test_redis_estimates_equal_the_core_on_the_same_events(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated_settings
    t0 = 1_795_000_000.0
    batches = share_batches(800, t0, 600.0, seed=1)
    # Half arrive as share_batch, half as the single shares they summarise (via the compactor),
    # in time order as a live feed would send them.
    events: list[dict[str, Any]] = []
    for i, b in enumerate(batches):
        if i % 2:
            events.append(b)
            continue
        ts = np.linspace(b["start"], b["end"], b["count"])
        d = b["difficulty_sum"] / b["count"]
        b.update(difficulty_sq_sum=d * d * b["count"])  # singles all at the mean difficulty
        events.extend({"type": "share", "ts": float(t), "pool": b["pool"],
                       "region": b["region"], "difficulty": d} for t in ts)
    await produce_keyed(settings, settings.topics.shares, events)
    await ShareCompactor(settings, instance="core-eq").run(max_idle_s=2.0)
    ends = await data_ends(settings, settings.topics.compacted_shares)

    worker = Worker(settings, tmp_path, "w1")
    try:
        as_of = max(b["end"] for b in batches) - settings.settle_s
        snapshot = await wait_for_snapshot(
            settings, offsets_reached(ends, as_of), 90, [worker])
    finally:
        worker.stop()
    # The core is given what the workers read: the singles as the compactor summed them (a
    # batch-fed pool's window ends at its last batch; see streams/core/shares.py).
    compacted = [orjson.loads(raw) for raw in await consume_all(
        settings, settings.topics.compacted_shares, expected=sum(ends.values()), timeout_s=10)]
    assert sum(b["count"] for b in compacted) == sum(b["count"] for b in batches)
    assert_matches_core(snapshot, core_regional_sample(compacted, settings, as_of))


async def test_two_workers_equal_one_and_a_killed_worker_loses_nothing(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated_settings
    t0 = 1_795_000_000.0
    batches = share_batches(3000, t0, 600.0, seed=2)
    first, rest = batches[:1000], batches[1000:]
    await produce_keyed(settings, settings.topics.compacted_shares, first)

    workers = [Worker(settings, tmp_path / "a", "w1"), Worker(settings, tmp_path / "b", "w2")]
    try:
        ends = await data_ends(settings, settings.topics.compacted_shares)
        await wait_for_snapshot(settings, offsets_reached(ends), 90, workers)
        # Mid-stream: keep producing while one worker is killed without warning.
        producing = asyncio.create_task(_produce_slowly(settings, rest))
        await asyncio.sleep(1.0)
        workers[0].kill()
        await producing
        ends = await data_ends(settings, settings.topics.compacted_shares)
        as_of = max(b["end"] for b in batches) - settings.settle_s
        snapshot = await wait_for_snapshot(
            settings, offsets_reached(ends, as_of), 120, workers)
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.stop()
    assert_matches_core(snapshot, core_regional_sample(batches, settings, as_of))

    # The same events through one fresh worker (new consumer group) give the same numbers.
    single = settings.model_copy(update={"app_id": settings.app_id + "-one",
                                         "redis_prefix": settings.redis_prefix + "one"})
    worker = Worker(single, tmp_path / "c", "w3")
    try:
        one = await wait_for_snapshot(
            single, offsets_reached(ends, as_of), 90, [worker])
    finally:
        worker.stop()
    assert {r["region"]: r["sample_hashrate_hs"] for r in one["regions"]} == pytest.approx(
        {r["region"]: r["sample_hashrate_hs"] for r in snapshot["regions"]}, rel=1e-9)


async def _produce_slowly(settings: Settings, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 100):
        await produce_keyed(settings, settings.topics.compacted_shares, events[i:i + 100])
        await asyncio.sleep(0.15)


async def test_real_blocks_are_attributed_and_bad_input_dead_lettered(
    isolated_settings: Settings, tmp_path: Path, test_data: Path
) -> None:
    settings = isolated_settings
    blocks = (test_data / "real_blocks.jsonl").read_bytes().splitlines()
    bad_blocks: list[bytes | dict[str, object]] = [
        b"\xff\xfe not utf8",
        {"type": "block", "height": -1, "hash": "00" * 32, "time": 1, "bits": "1d00ffff"},
        {"type": "block", "height": 5, "hash": "zz", "time": 1, "bits": "1d00ffff"},
        {"type": "block", "height": 5, "hash": "00" * 32, "time": 1, "bits": "ff00ffff"},
        {"type": "price", "ts": 1.0, "btc_usd": 1.0},
    ]
    bad_market: list[bytes | dict[str, object]] = [
        {"type": "price", "ts": 1.0, "btc_usd": -3.0},
        {"type": "price", "ts": 1.0},
    ]
    bad_batches: list[bytes | dict[str, object]] = [
        {"type": "share_batch", "start": 1.0, "end": 2.0, "pool": "p", "region": "US",
         "count": 2, "difficulty_sum": 1.0, "difficulty_sq_sum": 5.0},
        b"[]",
    ]
    await produce(settings, settings.topics.blocks, [*blocks, *bad_blocks])
    await produce(settings, settings.topics.market,
                  [{"type": "price", "ts": 1_795_000_000.0, "btc_usd": 95_000.0}, *bad_market])
    good = share_batches(50, 1_795_000_000.0, 600.0, seed=3)
    await produce(settings, settings.topics.compacted_shares, [*good, *bad_batches], key=b"k")

    port = free_port()
    worker = Worker(settings, tmp_path, "w1", metrics_port=port)
    try:
        snapshot = await wait_for_snapshot(
            settings, lambda s: s["network"]["blocks_seen"] == 5, 90, [worker])
        letters = [orjson.loads(r) for r in await consume_all(
            settings, settings.topics.dead_letter,
            expected=len(bad_blocks) + len(bad_market) + len(bad_batches), timeout_s=30)]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        worker.stop()

    client = redis.Redis.from_url(settings.redis_url)
    stored = [orjson.loads(b) for b in client.zrange(RedisKeys(settings.redis_prefix).blocks,
                                                     0, -1)]
    client.close()
    assert {b["height"]: b["pool"] for b in stored} == {
        250000: "Unknown", 330000: "F2Pool", 625007: "Huobi.pool", 629999: "F2Pool",
        722010: "BTC.com"}
    assert snapshot["network"]["tip_height"] == 722010
    # Pools (#15): attribution evidence per block, served with the blocks and in the snapshot.
    assert {b["height"]: b["attribution_detail"] for b in stored} == {
        250000: "unknown", 330000: "both", 625007: "both", 629999: "both", 722010: "address"}
    methods = snapshot["pools"]["attribution"]["methods"]
    assert {m: row["blocks"] for m, row in methods.items()} == {"both": 3, "address": 1,
                                                                 "unknown": 1}
    by_pool = {p["pool"]: p for p in snapshot["pools"]["pools"]}
    assert {pool: p["hashrate"]["2016"]["blocks"] for pool, p in by_pool.items()
            if p["hashrate"]["2016"]["blocks"]} == {"f2pool": 2, "huobi-pool": 1, "btc-com": 1,
                                                     "unknown": 1}
    by_topic: dict[str, list[str]] = {}
    for letter in letters:
        by_topic.setdefault(letter["topic"], []).append(letter["field"])
    assert by_topic[settings.topics.blocks] == ["$", "height", "hash", "bits", "type"]
    assert by_topic[settings.topics.market] == ["btc_usd", "btc_usd"]
    assert by_topic[settings.topics.compacted_shares] == ["difficulty_sq_sum", "$"]
    first_block_letter = next(x for x in letters if x["topic"] == settings.topics.blocks)
    assert base64.b64decode(first_block_letter["raw_b64"]) == b"\xff\xfe not utf8"
    text = metrics.decode()
    for topic, count in ((settings.topics.blocks, 5), (settings.topics.market, 2),
                         (settings.topics.compacted_shares, 2)):
        assert f'hashatlas_events_dead_lettered_total{{topic="{topic}"}} {count}.0' in text
