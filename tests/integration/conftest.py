"""Integration fixtures: isolated topic sets and consumer groups on the test session's own Kafka,
and a private Kafka broker for a test that stops it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from api.main import create_app
from streams import stack
from streams.settings import Partitions, Settings, Topics
from streams.topics import create_topics, topic_plan
from tests.conftest import free_port
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


@dataclass(frozen=True)
class PrivateKafkaOptions:
    """How a module's private broker differs from the defaults: ``Settings`` fields, and topics
    (by ``Topics`` field name) created with other partition counts than the settings say."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    topic_partitions: Mapping[str, int] = field(default_factory=dict)


@pytest.fixture()
def private_kafka_options() -> PrivateKafkaOptions:
    """What ``private_kafka`` changes; a test module overrides this fixture."""
    return PrivateKafkaOptions()


@pytest.fixture()
async def private_kafka(tmp_path: Path, redis_url: str,
                        private_kafka_options: PrivateKafkaOptions) -> AsyncIterator[Settings]:
    """A Kafka broker of this test alone (own ports, data, topics and Redis prefix), which it may
    stop and start again; its topics are created."""
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port(),
        state_dir=tmp_path / "stack", redis_url=redis_url, redis_prefix=f"hp{run}",
        app_id=f"hashatlas-private-{run}",
        topics=Topics(**{k: f"p{run}-{v}" for k, v in Topics().model_dump().items()}),
        **private_kafka_options.settings,
    )
    stack.ensure_dirs(settings)
    await asyncio.to_thread(stack.start_kafka, settings)
    try:
        await create_topics(settings, {
            **topic_plan(settings),
            **{getattr(settings.topics, name): partitions
               for name, partitions in private_kafka_options.topic_partitions.items()}})
        yield settings
    finally:
        await asyncio.to_thread(stack.stop_service, stack.kafka_service(settings), settings)


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
