"""The pipeline's Kafka topics: their names and partition counts, per-topic configuration, and
creating the missing ones (used by ``stack up``, the demo and the tests' private brokers)."""

from __future__ import annotations

from streams.kafka import client_options
from streams.settings import Settings


async def list_topics(settings: Settings) -> set[str]:
    """Topic names on the broker, with the settings' SASL/TLS options (3 s timeout)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=3000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def topic_plan(settings: Settings) -> dict[str, int]:
    """Topic name → partitions for every topic the pipeline reads or writes."""
    topics, parts = settings.topics, settings.partitions
    return {
        topics.shares: parts.shares,
        topics.compacted_shares: parts.compacted_shares,
        topics.blocks: parts.blocks,
        topics.market: parts.market,
        topics.estimates: parts.estimates,
        topics.alerts: parts.alerts,
        topics.dead_letter: parts.dead_letter,
        topics.history: parts.history,
    }


def topic_config(settings: Settings, name: str) -> dict[str, str] | None:
    """Per-topic settings: history steps and alerts, which Redis is rebuilt from, are kept as
    long as history; the input topics stamp records when the broker appends them, so the bound
    on event times ahead of the clock (taken against the record's timestamp) does not depend
    on a producer's clock."""
    topics = settings.topics
    if name in (topics.history, topics.alerts):
        return {"retention.ms": str(int(settings.history_retention_s * 1000))}
    if name in (topics.shares, topics.blocks, topics.market):
        return {"message.timestamp.type": "LogAppendTime"}
    return None


async def create_topics(settings: Settings, plan: dict[str, int] | None = None) -> list[str]:
    """Create missing topics with their partition counts; existing ones are left alone."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    plan = plan or topic_plan(settings)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, 1, topic_configs=topic_config(settings, name))
                   for name, partitions in plan.items() if name not in existing]
        if missing:
            await admin.create_topics(missing)
        return [topic.name for topic in missing]
    finally:
        await admin.close()
