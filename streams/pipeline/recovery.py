"""Refilling Redis from Kafka after Redis restarted empty (no operator action needed).

Redis is a cache of what the pipeline publishes. The snapshot and the recent blocks come back by
themselves within a tick (workers rewrite them from their restored state); history and alerts
are rebuilt here from the ``history`` and ``alerts`` topics, which keep them as long as the
history retention.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka import client_options
from streams.rediskeys import RedisKeys
from streams.settings import Settings


async def _read_topic(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> list[bytes]:
    """Every message of ``topic`` from the start to its end at the time of the call."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    out: list[bytes] = []
    remaining = {tp for tp in tps if ends[tp] > 0}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=1000)
        for tp, messages in batch.items():
            out.extend(m.value for m in messages if m.value is not None)
            if messages and messages[-1].offset + 1 >= ends[tp]:
                remaining.discard(tp)
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
    return out


async def rebuild_from_kafka(settings: Settings, redis: aioredis.Redis) -> dict[str, Any] | None:
    """Refill history and alerts; return the leader state of the newest history step, if any."""
    keys = RedisKeys(settings.redis_prefix)
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        steps = await _read_topic(consumer, settings.topics.history,
                                  settings.partitions.history)
        alerts = await _read_topic(consumer, settings.topics.alerts, settings.partitions.alerts)
    finally:
        with contextlib.suppress(asyncio.CancelledError):  # aiokafka 0.14, group-less stop
            await consumer.stop()
    leader: dict[str, Any] | None = None
    pipe = redis.pipeline(transaction=False)
    newest = -float("inf")
    for raw in steps:
        step = orjson.loads(raw)
        for series, point in step["points"].items():
            pipe.zadd(keys.history(series), {orjson.dumps(point): step["t"]})
        if step["t"] >= newest:
            newest, leader = step["t"], step.get("leader")
    for raw in alerts:
        alert = orjson.loads(raw)
        pipe.zadd(keys.alerts, {raw: alert.get("changed_at", alert["detected_at"])})
    await pipe.execute()
    return leader
