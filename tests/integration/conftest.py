"""Integration fixtures: isolated topic sets and consumer groups on the test session's own Kafka."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from api.main import create_app
from streams.settings import Partitions, Settings, Topics
from streams.topics import create_topics
from tests.integration.api_helpers import make_settings, open_client


@pytest.fixture()
async def isolated_settings(kafka_bootstrap: str, redis_url: str) -> Settings:
    """Settings with their own topics, consumer groups and Redis prefix, topics created."""
    run = uuid.uuid4().hex[:8]
    topics = Topics(**{name: f"t{run}-{value}" for name, value in Topics().model_dump().items()})
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        redis_prefix=f"ha{run}",
        app_id=f"hashatlas-test-{run}",
        topics=topics,
        partitions=Partitions(shares=2, compacted_shares=4),
        compact_interval_s=0.2,
    )
    await create_topics(settings)
    return settings


async def produce(settings: Settings, topic: str, messages: list[bytes | dict[str, object]],
                  key: bytes | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        for message in messages:
            value = message if isinstance(message, bytes) else orjson.dumps(message)
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def consume_all(settings: Settings, topic: str, expected: int, timeout_s: float = 30.0,
                      isolation_level: str = "read_committed") -> list[bytes]:
    """Read a topic from the start until ``expected`` messages or the timeout."""
    import asyncio
    import time

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, isolation_level=isolation_level,
    )
    await consumer.start()
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                out.extend(m.value for m in messages if m.value is not None)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return out


@pytest.fixture()
async def kafka_producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture()
def store(redis_url: str) -> Iterator[redis.Redis]:
    """A plain Redis client on the session's Redis, for writing what the pipeline writes."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture()
async def api(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API app (lifespan run) on the session's Redis, under the API tests' settings."""
    async for client in open_client(create_app(make_settings(redis_url))):
        yield client
