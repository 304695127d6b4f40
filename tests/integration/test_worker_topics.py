"""A worker started before its topics exist gets their partitions within seconds.

Faust declares only its internal topics (changelogs), not the agents' input topics; a worker
started before them subscribes to topics that do not exist, and the broker (auto-create on, as
in the local stack) makes them with one partition. Then the operator's plan arrives: more
partitions. aiokafka refreshed its metadata every 5 minutes, so the worker went on without the
new partitions for minutes (#18); with ``metadata_max_age_s`` it rebalances and reads them
within seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from streams.rediskeys import RedisKeys
from streams.settings import Partitions, Settings, Topics
from streams.topics import list_topics
from tests.integration.pipeline_helpers import Worker

PLANNED_PARTITIONS = 4


def fresh_settings(kafka_bootstrap: str, redis_url: str) -> Settings:
    """Settings whose topics do not exist yet (nothing creates them before the worker)."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, redis_prefix=f"hw{run}",
        app_id=f"hashatlas-topics-{run}",
        topics=Topics(**{k: f"w{run}-{v}" for k, v in Topics().model_dump().items()}),
        partitions=Partitions(shares=2, compacted_shares=PLANNED_PARTITIONS),
    )


async def grow(settings: Settings, topics: list[str], total: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({t: NewPartitions(total_count=total) for t in topics})
    finally:
        await admin.close()


async def send_batch(settings: Settings, partition: int) -> None:
    """One share_batch into ``partition`` of share-batches, once the producer sees it."""
    now = time.time()
    body = {"type": "share_batch", "pool": "antpool", "region": "US-TX", "start": now - 2.0,
            "end": now - 1.0, "count": 3, "difficulty_sum": 3 * 65536.0,
            "difficulty_sq_sum": 3 * 65536.0**2}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for _ in range(40):
            if partition in (await producer.partitions_for(settings.topics.compacted_shares)
                             or set()):
                break
            await asyncio.sleep(0.5)
            await producer.client.force_metadata_update()
        await producer.send_and_wait(settings.topics.compacted_shares, orjson.dumps(body),
                                     partition=partition)
    finally:
        await producer.stop()


async def partitions_of(settings: Settings, topic: str) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        return len(await producer.partitions_for(topic) or set())
    finally:
        await producer.stop()


async def test_a_worker_started_before_its_topics_reads_added_partitions_within_seconds(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    settings = fresh_settings(kafka_bootstrap, redis_url)
    topic = settings.topics.compacted_shares
    assert topic not in await list_topics(settings)
    keys = RedisKeys(settings.redis_prefix)
    redis = aioredis.Redis.from_url(redis_url)
    worker = Worker(settings, tmp_path / "worker", "early")
    try:
        deadline = time.monotonic() + 120
        while "[^Worker]: Ready" not in worker.log_path.read_text(errors="replace"):
            assert worker.proc.poll() is None, worker.log_tail()
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # past its first assignment
        assert await partitions_of(settings, topic) == 1  # made by the broker, not the plan
        await grow(settings, [topic], PLANNED_PARTITIONS)  # the operator's plan, after it
        grown_at = time.monotonic()
        last = PLANNED_PARTITIONS - 1
        await send_batch(settings, last)
        bound_s = 2 * settings.metadata_max_age_s + 15.0  # a refresh, a rebalance, a partial
        while not await redis.exists(keys.partial(last)):
            assert worker.proc.poll() is None, worker.log_tail()
            assert time.monotonic() - grown_at < bound_s, (
                f"partition {last} not read {bound_s:.0f} s after it was added\n"
                f"{worker.log_tail()}")
            await asyncio.sleep(0.2)
        print(f"\nadded partition read {time.monotonic() - grown_at:.1f} s after it was added")
    finally:
        worker.stop()
        await redis.aclose()
