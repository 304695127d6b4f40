"""The compactor against the real Kafka: sums are exact, bad input is dead-lettered, none lost."""

from __future__ import annotations

import base64

import numpy as np
import orjson

from streams.pipeline.compactor import ShareCompactor
from streams.settings import Settings
from tests.integration.conftest import consume_all, produce


def _share(ts: float, difficulty: float, pool: str = "foundry-usa", region: str = "US-TX",
           **extra: object) -> dict[str, object]:
    return {"type": "share", "ts": ts, "pool": pool, "region": region,
            "difficulty": difficulty, **extra}


async def test_single_shares_become_exact_batches(isolated_settings: Settings) -> None:
    settings = isolated_settings
    rng = np.random.default_rng(7)
    t0 = 1_732_400_000.0
    ts = t0 + np.sort(rng.uniform(0, 60, 500))
    diffs = rng.choice([1024.0, 4096.0, 65536.0], 500)
    pools = rng.choice(["foundry-usa", "antpool"], 500)
    regions = rng.choice(["US-TX", "us", "KZ"], 500)
    shares = [_share(float(t), float(d), str(p), str(r)) for t, d, p, r in
              zip(ts, diffs, pools, regions, strict=True)]
    await produce(settings, settings.topics.shares, shares)

    compactor = ShareCompactor(settings, instance="t1")
    await compactor.run(max_idle_s=2.0)

    batches = [orjson.loads(raw) for raw in await consume_all(
        settings, settings.topics.compacted_shares, expected=1, timeout_s=5)]
    assert batches, "compactor produced nothing"
    for batch in batches:
        assert batch["type"] == "share_batch"
        assert int(batch["start"] // 10) == int(batch["end"] // 10), "batch spans two buckets"
    # Totals per (pool, country-or-subdivision) equal the shares' own totals, exactly.
    for pool in ("foundry-usa", "antpool"):
        for region_in, region_out in (("US-TX", "US-TX"), ("us", "US"), ("KZ", "KZ")):
            mask = (pools == pool) & (regions == region_in)
            got = [b for b in batches if b["pool"] == pool and b["region"] == region_out]
            assert sum(b["count"] for b in got) == int(mask.sum())
            assert np.isclose(sum(b["difficulty_sum"] for b in got), diffs[mask].sum(), rtol=1e-12)
            assert np.isclose(sum(b["difficulty_sq_sum"] for b in got), (diffs[mask] ** 2).sum(),
                              rtol=1e-12)


async def test_bad_input_is_dead_lettered_with_field(isolated_settings: Settings) -> None:
    settings = isolated_settings
    bad: list[bytes | dict[str, object]] = [
        b"{not json",
        {"type": "share", "ts": 1.7e9, "pool": "p", "region": "US"},  # no difficulty
        _share(1.7e9, -5.0),
        _share(1.7e9, 1.0, region="XQ-99"),
        {"type": "share", "ts": "soon", "pool": "p", "region": "US", "difficulty": 1},
        {"type": "block", "height": 1, "hash": "00" * 32, "time": 1, "bits": "1d00ffff"},
        {"type": "share_batch", "start": 2.0e9, "end": 1.0e9, "pool": "p", "region": "US",
         "count": 1, "difficulty_sum": 1.0, "difficulty_sq_sum": 1.0},
    ]
    good = [_share(1.7e9 + i, 8.0) for i in range(3)]
    await produce(settings, settings.topics.shares, [*bad[:3], *good, *bad[3:]], key=b"p")
    compactor = ShareCompactor(settings, instance="t2")
    await compactor.run(max_idle_s=2.0)

    letters = [orjson.loads(raw) for raw in await consume_all(
        settings, settings.topics.dead_letter, expected=len(bad), timeout_s=10)]
    assert len(letters) == len(bad)
    fields = [letter["field"] for letter in letters]
    assert fields == ["$", "difficulty", "difficulty", "region", "ts", "type", "end"]
    assert base64.b64decode(letters[0]["raw_b64"]) == b"{not json"
    assert [letter["offset"] for letter in letters] == [0, 1, 2, 6, 7, 8, 9]
    batches = [orjson.loads(raw) for raw in await consume_all(
        settings, settings.topics.compacted_shares, expected=1, timeout_s=5)]
    assert sum(b["count"] for b in batches) == 3


async def test_rejected_and_duplicate_shares_are_not_credited(isolated_settings: Settings) -> None:
    settings = isolated_settings
    shares = [
        _share(1.7e9, 100.0, id="a"),
        _share(1.7e9 + 1, 100.0, id="a"),  # resent by the proxy
        _share(1.7e9 + 2, 100.0, accepted=False),
        _share(1.7e9 + 3, 100.0, id="b"),
    ]
    await produce(settings, settings.topics.shares, shares)
    await ShareCompactor(settings, instance="t3").run(max_idle_s=2.0)
    batches = [orjson.loads(raw) for raw in await consume_all(
        settings, settings.topics.compacted_shares, expected=1, timeout_s=5)]
    assert sum(b["count"] for b in batches) == 2
    assert sum(b["difficulty_sum"] for b in batches) == 200.0


async def test_a_label_flood_loses_no_share_and_the_key_table_is_let_go(
    isolated_settings: Settings,
) -> None:
    from prometheus_client import REGISTRY

    def overflow() -> float:
        return REGISTRY.get_sample_value("hashatlas_compactor_overflow_shares_total") or 0.0

    settings = isolated_settings.model_copy(update={"max_compactor_keys": 20})
    shares = [_share(1_732_400_000.0 + i * 0.01, 4.0, pool=f"flood-{i}") for i in range(500)]
    await produce(settings, settings.topics.shares, list(shares))
    before = overflow()
    compactor = ShareCompactor(settings, instance="t-flood")
    await compactor.run(max_idle_s=2.0)

    batches = [orjson.loads(raw) for raw in await consume_all(
        settings, settings.topics.compacted_shares, expected=10**6, timeout_s=5)]
    assert sum(b["count"] for b in batches) == len(shares)
    folded = sum(b["count"] for b in batches if b["pool"] == "other")
    assert folded > 0 and overflow() - before == folded
    assert not compactor.keys.full  # emptied by the flush that followed the flood


async def test_partitions_added_while_running_are_read_within_seconds(
    isolated_settings: Settings,
) -> None:
    """aiokafka refreshed its metadata every 5 minutes: shares sent to a partition added after
    the compactor started were not read for minutes (#18)."""
    import asyncio
    import time

    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

    settings = isolated_settings  # `shares` has 2 partitions
    compactor = ShareCompactor(settings, instance="grows")
    running = asyncio.create_task(compactor.run())
    try:
        await produce(settings, settings.topics.shares, [_share(1_732_400_000.0, 1024.0)])
        assert await consume_all(settings, settings.topics.compacted_shares, 1, timeout_s=20)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({settings.topics.shares: NewPartitions(total_count=4)})
        finally:
            await admin.close()
        added = time.monotonic()
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            for _ in range(20):  # until the producer's own metadata knows partition 3
                if 3 in await producer.partitions_for(settings.topics.shares):
                    break
                await asyncio.sleep(0.5)
                await producer.client.force_metadata_update()
            await producer.send_and_wait(settings.topics.shares, partition=3, value=orjson.dumps(
                _share(1_732_400_100.0, 4096.0, pool="antpool")))
        finally:
            await producer.stop()
        batches = await consume_all(settings, settings.topics.compacted_shares, 2, timeout_s=30)
        took = time.monotonic() - added
        assert [orjson.loads(b)["pool"] for b in batches] == ["foundry-usa", "antpool"]
        assert took < 2 * settings.metadata_max_age_s + 5.0, took
    finally:
        await compactor.stop()
        await running
