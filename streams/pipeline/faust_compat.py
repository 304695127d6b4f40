"""Every use the worker makes of faust-streaming's and aiokafka's internals, in one module.

Written for faust-streaming 0.15.3 and aiokafka 0.14.0 (``FAUST_VERSIONS``,
``AIOKAFKA_VERSIONS``). ``tests/unit/test_faust_compat.py`` fails when another version is
installed, and checks that every attribute used here still exists. On an upgrade, re-read the
Faust source behind each item below, then add the version to the tuple.

Internals used, and why:

- ``Consumer.unacked`` and ``Message.acked`` (``FaustInput.release``): tell Faust an event is
  done without acknowledging it, so Faust neither commits its offset nor waits for it at the
  next rebalance; offsets are committed from checkpoints only.
- ``Table.data`` and ``Table.send_changelog`` (``FaustInput.read_checkpoint`` /
  ``write_checkpoint``): read and write a partition's checkpoint from a timer, outside the
  event context that ``table[key] = value`` needs.
- ``Consumer._commit(offsets)`` (``FaustInput.commit``): the public ``commit()`` takes no
  offsets; this commits the given ones (assigned partitions only).
- ``Consumer._gap`` (``forget_offset_gaps``, after each commit): Faust notes every jump in a
  partition's offsets (a transaction marker: one per compactor flush and partition) in an
  interval tree that only its own commit prunes, merging the whole tree on each new one. The
  worker commits by itself, so the trees grew for good (#18: seen with tracemalloc in the soak);
  nothing else reads them.
- ``TableManager.recovery.active_remaining_total()`` (``recovery_remaining``): how many
  changelog records the recovery still has to read, to tell a stalled recovery from a long one.
- ``AIOKafkaConsumerThread._create_worker_consumer`` and aiokafka's
  ``AIOKafkaConsumer._isolation_level`` (``read_committed_worker_consumers``): Faust asks for
  ``read_committed`` only under its own exactly-once processing.
- ``App.on_stop`` reading ``conf.stream_wait_empty`` (``HashatlasApp``): no wait for
  unacknowledged events at shutdown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import faust
from faust.types import TP

FAUST_VERSIONS = ("0.15.3",)
AIOKAFKA_VERSIONS = ("0.14.0",)


class FaustInput:
    """One input topic and its checkpoint table over Faust: the ``InputPort`` the
    checkpoint loop (``streams.pipeline.checkpoint_loop``) drives."""

    def __init__(self, app: faust.App, topic: str, partitions: int) -> None:
        self.app = app
        self.topic_name = topic
        self.topic = app.topic(topic, key_serializer="raw", value_serializer="raw",
                               partitions=partitions)
        # The changelog topic's name follows from the table's: it must not change.
        self.table = app.Table(f"{topic}-checkpoints", default=None, partitions=partitions,
                               key_type=bytes, value_type=bytes)

    def generation(self) -> int:
        """The consumer group generation of the current assignment."""
        return int(self.app.consumer_generation_id)

    def read_checkpoint(self, partition: int) -> bytes | None:
        value: bytes | None = self.table.data.get(checkpoint_key(partition))
        return value

    def write_checkpoint(self, partition: int, value: bytes) -> None:
        """Into the table and its changelog (sent; flushed by ``flush``)."""
        key = checkpoint_key(partition)
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value)

    def release(self, events: Iterable[Any]) -> None:
        """Mark events done without acknowledging them: Faust commits nothing for them."""
        pending = self.app.consumer.unacked
        for event in events:
            event.message.acked = True
            pending.discard(event.message)

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        """Commit these partitions' offsets (the next offset to read)."""
        tps = {TP(self.topic_name, partition): offset for partition, offset in offsets.items()}
        committed: bool = await self.app.consumer._commit(tps)  # type: ignore[attr-defined]
        if committed:
            forget_offset_gaps(self.app.consumer, tps)
        return committed

    async def seek(self, partition: int, offset: int) -> None:
        await self.app.consumer.seek(TP(self.topic_name, partition), offset)

    def highwater(self, partition: int) -> int | None:
        end: int | None = self.app.consumer.highwater(TP(self.topic_name, partition))
        return end

    async def flush(self) -> None:
        await self.app.producer.flush()

    async def send(self, topic: str, body: bytes) -> None:
        await self.app.producer.send(topic, None, body, None, None, None)


def forget_offset_gaps(consumer: Any, committed: Iterable[TP]) -> None:
    """Drop Faust's record of the offsets its consumer jumped over in these partitions."""
    gaps = consumer._gap
    for tp in committed:
        gaps.pop(tp, None)


def checkpoint_key(partition: int) -> bytes:
    return str(partition).encode()


def recovery_remaining(app: faust.App) -> int:
    """Changelog records Faust's table recovery has yet to read (0 when idle)."""
    remaining: int = app.tables.recovery.active_remaining_total()  # type: ignore[attr-defined]
    return remaining


def read_committed_worker_consumers() -> None:
    """Make Faust's worker consumer read only committed messages.

    Faust asks for ``read_committed`` only when it runs transactions itself
    (processing_guarantee exactly_once), which this pipeline does not need: its state is
    effectively-once by checkpoints. But ``share-batches`` is written in transactions by the
    compactor, and the batches of a transaction it aborted (killed, or cut off from the broker,
    mid-flush) must stay invisible, or they are credited and then credited again when the
    compactor re-sends them. Idempotent."""
    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "read_committed", False):
        return

    def create_read_committed(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._isolation_level = "read_committed"  # read when the consumer starts
        return consumer

    create_read_committed.read_committed = True  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_read_committed  # type: ignore[method-assign]


class HashatlasApp(faust.App):
    """Waits for in-flight events during rebalances (so none is applied by two owners), but
    not at shutdown: unacknowledged events wait for a checkpoint, and a stopping worker's are
    simply redelivered to the next owner, which skips what its checkpoint already covers."""

    async def on_stop(self) -> None:
        self.conf.stream_wait_empty = False
        await super().on_stop()
