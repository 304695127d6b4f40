"""The snapshot leader never waits on Kafka: with its broker stopped it goes on writing snapshots
to Redis, its Kafka outputs wait in the bounded outbox (the oldest dropped beyond it, counted),
and once the broker is back what waited is sent.

A worker process is the leader, on a Kafka of this test alone. Event time must move for the
leader to have history steps to send while the broker is away; a real worker's partitions
cannot move then (they come from Kafka), so the test plays a second worker: it writes the
partial of a third partition to Redis as a worker does (``ShareBatchPartition.partial``),
moving on 5 s of event time per 0.5 s, one history step (1 s here) per snapshot or more.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import stack
from streams.models.partials import encode
from streams.pipeline.state import ShareBatchPartition
from streams.rediskeys import RedisKeys
from streams.settings import Partitions, Settings
from tests.conftest import free_port
from tests.integration.conftest import PrivateKafkaOptions, produce
from tests.integration.pipeline_helpers import Worker, wait_for_snapshot

T0 = 1_795_000_000.0
CAPACITY = 5
OUTAGE_S = 20.0
PLAYED = 2  # the partition whose partial the test writes; the worker owns 0 and 1
#: Outputs the outbox had handed to the Kafka client before it stopped taking them (the client
#: packs several small messages into its batch before it waits for the broker).
IN_CLIENT = 5


@pytest.fixture()
def private_kafka_options() -> PrivateKafkaOptions:
    """The compacted topic has the worker's two partitions only; the leader reads three
    partials."""
    return PrivateKafkaOptions(
        settings={"partitions": Partitions(shares=1, compacted_shares=PLAYED + 1),
                  "history_step_s": 1.0, "leader_outbox_capacity": CAPACITY},
        topic_partitions={"compacted_shares": PLAYED})


def batch(t: float, pool: str = "foundry-usa", region: str = "US-TX") -> dict[str, object]:
    d = 65536.0
    return {"type": "share_batch", "pool": pool, "region": region, "start": t, "end": t + 4.0,
            "count": 40, "difficulty_sum": 40 * d, "difficulty_sq_sum": 40 * d * d}


class PlayedWorker:
    """The partial a worker owning partition ``PLAYED`` would write, moving on in event time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = ShareBatchPartition.restore(None, settings)
        self.t = T0 + 60.0
        self.keys = RedisKeys(settings.redis_prefix)

    async def step(self, redis: aioredis.Redis, event_s: float) -> None:
        self.t += event_s
        self.state.apply(orjson.dumps(batch(self.t - 4.0, "antpool", "KZ")), self.t + 60.0)
        self.state.next_offset += 1
        partial = self.state.partial(self.t - self.settings.settle_s, self.settings.windows_s)
        published = partial.at_partition(PLAYED, self.state.next_offset, time.time(), time.time())
        await redis.set(self.keys.partial(PLAYED), encode(published))


def outputs(port: int, topic: str, outcome: str) -> float:
    """The worker's hashatlas_leader_outputs_total{topic, outcome}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = f'hashatlas_leader_outputs_total{{outcome="{outcome}",topic="{topic}"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines()
               if line.startswith(prefix))


async def history_steps(settings: Settings) -> list[float]:
    """The step times of every message on the history topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topics.history, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        steps: list[float] = []
        while await consumer.position(tp) < end:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                steps.extend(float(orjson.loads(m.value)["t"]) for m in messages if m.value)
        return steps
    finally:
        await consumer.stop()


async def test_snapshots_go_on_while_the_broker_is_away_and_queued_outputs_follow(
    private_kafka: Settings, tmp_path: Path, test_data: Path
) -> None:
    settings = private_kafka
    keys = RedisKeys(settings.redis_prefix)
    redis = aioredis.Redis.from_url(settings.redis_url)
    await produce(settings, settings.topics.blocks,
                  (test_data / "real_blocks.jsonl").read_bytes().splitlines())
    await produce(settings, settings.topics.compacted_shares,
                  [batch(T0 + s) for s in range(0, 60, 5)], key=b"k")
    port = free_port()
    worker = Worker(settings, tmp_path / "worker", "leader", metrics_port=port)
    played = PlayedWorker(settings)
    kafka = stack.kafka_service(settings)
    try:
        await played.step(redis, 0.0)
        await wait_for_snapshot(settings, lambda s: s["network"]["hashrate_hs"] is not None
                                and s["as_of"] >= T0 + 50, 120, [worker])
        await asyncio.sleep(3.0)  # the history steps so far are sent
        dropped_before = outputs(port, settings.topics.history, "dropped")

        await asyncio.to_thread(stack.stop_service, kafka, settings)
        down_at = time.monotonic()
        outage_steps: list[float] = []
        published: list[float] = []
        ticks = 0
        while time.monotonic() - down_at < OUTAGE_S:
            if ticks % 5 == 0:
                await played.step(redis, 5.0)
            ticks += 1
            await asyncio.sleep(0.1)
            raw, body = await redis.hmget(keys.snapshot, ["published_at", "json"])
            assert raw is not None and body is not None
            if not published or float(raw) > published[-1]:
                published.append(float(raw))
            snapshot = orjson.loads(body)
            step = snapshot["as_of"] // settings.history_step_s * settings.history_step_s
            if not outage_steps or step > outage_steps[-1]:
                outage_steps.append(step)
        dropped = outputs(port, settings.topics.history, "dropped") - dropped_before
        await asyncio.to_thread(stack.start_kafka, settings)
        assert worker.proc.poll() is None, worker.log_tail()

        # The timer went on: a new snapshot at least every 2 s (it ticks every 0.5 s).
        gaps = [b - a for a, b in itertools.pairwise(published)]
        assert len(published) >= OUTAGE_S / 2, published
        assert max(gaps) < 2.0, gaps
        # What could not wait was dropped and counted: all but the queue and the client's batch.
        assert len(outage_steps) > 3 * CAPACITY
        assert dropped >= len(outage_steps) - CAPACITY - IN_CLIENT, (dropped, len(outage_steps))

        # Back: the queued outputs are sent, the newest of the outage among them (the test
        # may have missed a step between two reads, so "newest" is checked loosely).
        deadline = time.monotonic() + 90
        while True:
            sent = set(await history_steps(settings))
            if outage_steps[-1] in sent and len(sent & set(outage_steps)) >= CAPACITY - 2:
                break
            assert time.monotonic() < deadline, (outage_steps[-CAPACITY:], sorted(sent)[-10:],
                                                 worker.log_tail())
            await asyncio.sleep(1.0)
        assert len(sent & set(outage_steps)) <= CAPACITY + IN_CLIENT  # the dropped ones are not
        assert outputs(port, settings.topics.history, "sent") > 0
    finally:
        worker.stop()
        await redis.aclose()
