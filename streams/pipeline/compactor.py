"""The share compactor: single ``share`` events in, ``share_batch`` events out, exactly once.

A plain aiokafka consumer (no Faust bookkeeping per message) reads the ``shares`` topic, sums
single shares per (pool, region, fine bucket) with numpy and writes the totals to the internal
``share-batches`` topic that the Faust workers read. ``share_batch`` events pass through after
validation; unusable input goes to ``dead-letter`` with the reason.

Each flush is one Kafka transaction holding the batches, the dead letters and the consumed
offsets, so a compactor killed at any point neither loses nor repeats a share: the workers read
``share-batches`` with ``read_committed``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import orjson
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)

from streams.contracts import (
    MAX_DIFFICULTY,
    DeadLetter,
    InvalidEvent,
    ShareBatchEvent,
    ShareEvent,
    decision_time,
    decode_input,
    latest_event_time,
)
from streams.core.compaction import KeyTable, summarise_shares
from streams.core.regions import normalise_region
from streams.kafka import client_options
from streams.metrics import (
    COMPACTOR_OVERFLOW_SHARES,
    CONSUMER_LAG,
    EVENT_TIME_LAG,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
    SHARE_BATCHES_EMITTED,
    SHARES,
)
from streams.settings import Settings

log = logging.getLogger("hashatlas.compactor")

_NUMBER = (int, float)
_TIMESTAMP = attrgetter("timestamp")


def _json(body: dict[str, Any]) -> bytes:
    """``orjson.dumps``, right-sized. orjson 3.12+ returns bytes that keep its whole 4 KiB
    working buffer allocated, and a flush holds up to 500,000 of these at once: ~20× the memory
    of the JSON itself. Joining copies into an object of the exact size (~0.1 µs)."""
    return b"".join((orjson.dumps(body), b""))


class RecentIds:
    """Bounded memory of recent share ids, so a share resent by a proxy is credited once."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, share_id: str) -> bool:
        """True if the id was seen before; remembers it otherwise."""
        if share_id in self._ids:
            return True
        self._ids[share_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


@dataclass
class PendingFlush:
    """What has been read since the last transaction."""

    key_ids: list[int] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    difficulty: list[float] = field(default_factory=list)
    passthrough: list[tuple[float, bytes, bytes]] = field(default_factory=list)
    dead_letters: list[bytes] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    newest_event_ts: float = 0.0  # of the slow path's events; the fast path's are in ``ts``

    def __len__(self) -> int:
        return len(self.ts) + len(self.passthrough) + len(self.dead_letters)


def earliest_decision_time(messages: Sequence[ConsumerRecord[Any, bytes]], now: float) -> float:
    """The earliest ``decision_time`` of these records (ms timestamps; none: the clock)."""
    lowest = min(map(_TIMESTAMP, messages), default=0)
    if lowest > 0:
        return float(lowest) * 0.001
    stamped = [m.timestamp for m in messages if m.timestamp > 0]
    return min(now, min(stamped) * 0.001) if stamped else now


class ShareCompactor:
    """Consume ``shares``, sum single shares, produce ``share_batch`` totals transactionally."""

    def __init__(self, settings: Settings, instance: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.group_id = f"{settings.app_id}-compactor"
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self.bucket_s = settings.fine_bucket_s
        self.clock = clock  # wall clock, for the bound on event times ahead of it
        self.pending = PendingFlush()
        self.keys = KeyTable(settings.max_compactor_keys)
        self._regions: dict[str, str | None] = {}
        self._raw_keys: dict[tuple[str, str], int] = {}
        self._warned_full = False
        self._ids = RecentIds(settings.dedup_capacity)
        self._stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None

    # ---- decoding (hot path) ---------------------------------------------------------------

    def _region(self, raw: str) -> str | None:
        """Validated region code for a raw label, cached (labels repeat millions of times)."""
        code = self._regions.get(raw)
        if code is None and raw not in self._regions:
            try:
                code = normalise_region(raw)
            except ValueError:
                code = None
            if len(self._regions) < 100_000:
                self._regions[raw] = code
        return code

    def _raw_key_id(self, pool: str, region_raw: str) -> int:
        """Key id for a share's raw (pool, region) labels, or -1 if either is unusable; cached,
        so a repeated pair costs one dict lookup instead of two validations."""
        key_id = -1
        if 0 < len(pool) <= 64 and pool.isprintable():
            region = self._region(region_raw)
            if region is not None:
                key_id = self.keys.id_of(pool, region)
        if len(self._raw_keys) < 100_000:
            self._raw_keys[(pool, region_raw)] = key_id
        return key_id

    def ingest(self, messages: Sequence[ConsumerRecord[Any, bytes]], topic: str,
               partition: int) -> None:
        """Take messages from one partition of ``shares``: credit, pass through, or dead-letter.

        The fast path (a plain accepted share, no id, known labels) is inlined here with every
        name bound locally: it runs once per share, and the per-message cost sets the
        compactor's rate. Event times are bounded against each record's Kafka timestamp (the
        clock, read once per call, for a record without one), so a replay decides the same.
        """
        now = self.clock()
        # Every record's own bound is at least this one: the fast path accepts below it, and a
        # share above it goes the slow way, judged against its own record's time.
        latest = latest_event_time(earliest_decision_time(messages, now),
                                   self.settings.max_future_skew_s)
        pending = self.pending
        add_key, add_ts, add_diff = (pending.key_ids.append, pending.ts.append,
                                     pending.difficulty.append)
        raw_keys = self._raw_keys
        max_bytes = self.settings.max_message_bytes
        loads, decode_error, number = orjson.loads, orjson.JSONDecodeError, _NUMBER
        for message in messages:
            raw = message.value
            payload: Any = None
            if raw is not None and len(raw) <= max_bytes:
                try:
                    payload = loads(raw)
                except decode_error:
                    payload = None
            if type(payload) is dict and payload.get("type") == "share":
                ts: Any = payload.get("ts")
                diff: Any = payload.get("difficulty")
                pool: Any = payload.get("pool")
                region_raw: Any = payload.get("region")
                if (
                    type(ts) in number and type(diff) in number and type(pool) is str
                    and type(region_raw) is str and 0 < ts <= latest
                    and 0 < diff <= MAX_DIFFICULTY
                    and payload.get("id") is None and payload.get("accepted", True) is True
                    and type(payload.get("worker", "")) is str
                    and type(payload.get("ip", "")) is str
                ):
                    key_id = raw_keys.get((pool, region_raw))
                    if key_id is None:
                        key_id = self._raw_key_id(pool, region_raw)
                    if key_id >= 0:
                        add_key(key_id)
                        add_ts(float(ts))
                        add_diff(float(diff))
                        continue
            self._ingest_slow(raw, topic, partition, message.offset,
                              decision_time(message.timestamp * 0.001, now))

    def _ingest_slow(self, raw: bytes | None, topic: str, partition: int, offset: int,
                     now: float) -> None:
        raw_bytes = raw or b""
        try:
            if raw is None:
                raise InvalidEvent("$", "empty message (no value)")
            if len(raw) > self.settings.max_message_bytes:
                raise InvalidEvent(
                    "$", f"message of {len(raw)} bytes exceeds {self.settings.max_message_bytes}"
                )
            event = decode_input(raw, now=now,
                                 max_future_skew_s=self.settings.max_future_skew_s)
            if isinstance(event, ShareEvent):
                self._credit_share(event)
            elif isinstance(event, ShareBatchEvent):
                self._pass_batch(event)
            else:
                raise InvalidEvent(
                    "type", f"{event.type} events belong on their own topic, not {topic!r}"
                )
        except InvalidEvent as error:
            self.pending.dead_letters.append(
                DeadLetter.of(topic, partition, offset, error, raw_bytes).model_dump_json().encode()
            )
            EVENTS_DEAD_LETTERED.labels(topic).inc()

    def _credit_share(self, event: ShareEvent) -> None:
        if not event.accepted:
            SHARES.labels("rejected").inc()
            return
        if event.id is not None and self._ids.seen(f"{event.pool}\x00{event.id}"):
            SHARES.labels("duplicate").inc()
            return
        region = self._located_region(event)
        pending = self.pending
        pending.key_ids.append(self.keys.id_of(event.pool, region))
        pending.ts.append(event.ts)
        pending.difficulty.append(event.difficulty)
        pending.newest_event_ts = max(pending.newest_event_ts, event.ts)

    def _located_region(self, event: ShareEvent) -> str:
        if event.region is not None:
            region = self._region(event.region)
            if region is None:
                raise InvalidEvent("region", f"unknown ISO 3166 code {event.region!r}")
            return region
        import ipaddress

        import iptocc

        try:
            ipaddress.ip_address(event.ip or "")
        except ValueError:
            raise InvalidEvent("ip", "not an IPv4 or IPv6 address") from None
        return iptocc.country_code(event.ip or "") or "ZZ"

    def _pass_batch(self, event: ShareBatchEvent) -> None:
        region = self._region(event.region)
        if region is None:
            raise InvalidEvent("region", f"unknown ISO 3166 code {event.region!r}")
        body = event.model_dump(mode="json")
        body["region"] = region
        self.pending.passthrough.append((event.start, event.pool.encode(), _json(body)))
        self.pending.newest_event_ts = max(self.pending.newest_event_ts, event.end)

    # ---- flushing ---------------------------------------------------------------------------

    def encoded_batches(self) -> list[tuple[float, bytes, bytes]]:
        """Pending single shares and passed-through batches as (start, key, share_batch JSON),
        in event-time order."""
        pending = self.pending
        totals = summarise_shares(pending.key_ids, pending.ts, pending.difficulty, self.bucket_s)
        out: list[tuple[float, bytes, bytes]] = list(pending.passthrough)
        keys = self.keys
        if len(totals):
            SHARES.labels("credited").inc(int(totals.count.sum()))
            COMPACTOR_OVERFLOW_SHARES.inc(keys.overflow_count(totals))
        for i in range(len(totals)):
            pool, region = keys.key(int(totals.key_ids[i]))
            count = int(totals.count[i])
            out.append((float(totals.start[i]), pool.encode(), _json({
                "type": "share_batch", "pool": pool, "region": region,
                "start": float(totals.start[i]), "end": float(totals.end[i]), "count": count,
                "difficulty_sum": float(totals.difficulty_sum[i]),
                "difficulty_sq_sum": float(totals.difficulty_sq_sum[i]),
            })))
        out.sort(key=lambda item: item[0])
        return out

    async def flush(self) -> None:
        """Send everything pending and the consumed offsets in one transaction."""
        pending = self.pending
        if not pending.offsets:
            return
        assert self.producer is not None
        batches = self.encoded_batches()
        async with self.producer.transaction():
            for _, key, value in batches:
                await self.producer.send(self.topics.compacted_shares, value=value, key=key)
            for value in pending.dead_letters:
                await self.producer.send(self.topics.dead_letter, value=value)
            await self.producer.send_offsets_to_transaction(
                {tp: offset + 1 for tp, offset in pending.offsets.items()}, self.group_id
            )
        SHARE_BATCHES_EMITTED.inc(len(batches))
        newest = max(pending.newest_event_ts, max(pending.ts, default=0.0))
        if newest:
            EVENT_TIME_LAG.labels(self.topics.shares).set(time.time() - newest)
        self.pending = PendingFlush()
        if self.keys.full:
            self._forget_keys()

    def _forget_keys(self) -> None:
        """Start an empty key table (nothing pending refers to the old ids after a flush), so
        pools of a label flood are let go and real pools get their own keys back."""
        if not self._warned_full:
            log.warning("the key table reached max_compactor_keys (%d): shares of further "
                        "pools were summed under 'other' until the flush "
                        "(hashatlas_compactor_overflow_shares_total)", self.keys.capacity)
            self._warned_full = True
        self.keys = KeyTable(self.settings.max_compactor_keys)
        self._raw_keys.clear()

    # ---- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        options = client_options(self.settings)
        self.producer = AIOKafkaProducer(
            **options,
            transactional_id=f"{self.settings.app_id}-compactor-{self.instance}",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=4_194_304,
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            **options,
            group_id=self.group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8_388_608,
            fetch_max_bytes=67_108_864,
            metadata_max_age_ms=int(self.settings.metadata_max_age_s * 1000),
        )
        self.consumer.subscribe([self.topics.shares], listener=_FlushOnRevoke(self))
        await self.consumer.start()

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self, max_idle_s: float | None = None) -> None:
        """Consume until stopped (or idle for ``max_idle_s``, for benchmarks and tests)."""
        await self.start()
        assert self.consumer is not None and self.producer is not None
        last_flush = time.monotonic()
        last_data = time.monotonic()
        lag: dict[TopicPartition, int] = {}
        try:
            while not self._stopping.is_set():
                records = await self.consumer.getmany(timeout_ms=100, max_records=100_000)
                for tp, messages in records.items():
                    if messages:
                        self.ingest(messages, tp.topic, tp.partition)
                        self.pending.offsets[tp] = messages[-1].offset
                        EVENTS_CONSUMED.labels(tp.topic).inc(len(messages))
                        last_data = time.monotonic()
                        end = self.consumer.highwater(tp)
                        if end is not None:
                            lag[tp] = max(0, end - messages[-1].offset - 1)
                if records:
                    CONSUMER_LAG.labels(self.topics.shares).set(
                        sum(n for tp, n in lag.items() if tp in self.consumer.assignment()))
                now = time.monotonic()
                due = now - last_flush >= self.settings.compact_interval_s
                if due or len(self.pending) > 500_000 or self.keys.full:
                    await self.flush()
                    last_flush = now
                if max_idle_s is not None and now - last_data > max_idle_s:
                    break
            await self.flush()
        finally:
            await self.consumer.stop()
            await self.producer.stop()


class _FlushOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka: untyped
    """Commit what is pending before partitions move to another compactor."""

    def __init__(self, compactor: ShareCompactor) -> None:
        self.compactor = compactor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self.compactor.producer is not None and self.compactor.pending.offsets:
            await self.compactor.flush()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


def run_compactor(settings: Settings, instance: str | None = None) -> None:
    """Run until SIGINT/SIGTERM, flushing what is pending on the way out."""
    compactor = ShareCompactor(settings, instance)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(compactor.stop()))
        await compactor.run()

    asyncio.run(main())
