"""Faults while events flow: workers killed, restarted, added and removed (shared stack,
isolated topics), and a private Kafka broker stopped for 30 s under a running pipeline.

Every test ends by comparing the published estimates with the core's on exactly the events that
reached Kafka: nothing lost, nothing counted twice. Recovery times are measured and printed
(``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaTimeoutError

from api.main import create_app
from streams import stack
from streams.settings import Partitions, Settings
from tests.integration.conftest import PrivateKafkaOptions
from tests.integration.pipeline_helpers import (
    Compactor,
    Worker,
    assert_matches_core,
    core_regional_sample,
    offsets_reached,
    produce_keyed,
    read_snapshot,
    share_batches,
    wait_for_log,
    wait_for_snapshot,
)

POOLS = ("foundry-usa", "antpool", "f2pool", "viabtc", "binance-pool", "mara-pool")
REGIONS = ("US-TX", "US-GA", "US", "CN-SC", "KZ", "CA", "RU", "MY", "DE")
T0 = 1_795_000_000.0
RECOVERY_BOUND_S = 60.0


async def partition_ends(settings: Settings, topic: str, partitions: int | None = None
                         ) -> dict[int, int]:
    """End offset of each partition (``partitions`` defaults to share-batches')."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        count = settings.partitions.compacted_shares if partitions is None else partitions
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(tps)
        return {tp.partition: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        with contextlib.suppress(asyncio.CancelledError):  # aiokafka 0.14, group-less stop
            await consumer.stop()


async def committed_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """What the workers' consumer group has committed on ``topic``, per partition."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.app_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def time_until_covered(settings: Settings, expected: dict[int, int], since: float,
                             timeout_s: float) -> float:
    """Seconds from ``since`` (monotonic) to the first snapshot covering ``expected``."""
    covered = offsets_reached(expected)
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        snapshot = read_snapshot(settings)
        if snapshot is not None and covered(snapshot):
            return time.monotonic() - since
        await asyncio.sleep(0.1)
    raise AssertionError(f"no snapshot covered {expected} within {timeout_s} s")


# ---- workers --------------------------------------------------------------------------------

# Faust's defaults (session 60 s, rebalance 60 s) keep a SIGKILLed worker's partitions frozen
# for a minute or two before anyone takes them over; Faust reads these from the environment,
# which is how an operator shortens them too.
FAST_FAILOVER_ENV = {"BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1",
                     "BROKER_REBALANCE_TIMEOUT": "20"}


class Flow:
    """Sends events in small chunks until told to stop; remembers exactly what Kafka acked."""

    def __init__(self, settings: Settings, events: list[dict[str, Any]]) -> None:
        self.settings = settings
        self.events = events
        self.sent = 0
        self.stopping = asyncio.Event()

    async def run(self, chunk: int = 40, pause_s: float = 0.25) -> None:
        topic = self.settings.topics.compacted_shares
        while not self.stopping.is_set() and self.sent < len(self.events):
            await produce_keyed(self.settings, topic, self.events[self.sent:self.sent + chunk])
            self.sent = min(self.sent + chunk, len(self.events))
            await asyncio.sleep(pause_s)


async def test_workers_killed_restarted_added_and_removed_while_events_flow(
    isolated_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in FAST_FAILOVER_ENV.items():
        monkeypatch.setenv(name, value)
    # A worker whose changelog recovery hangs (a Faust defect after quick rebalances) stops
    # after 30 s and the others take over.
    settings = isolated_settings.model_copy(update={"recovery_stall_s": 30.0})
    topic = settings.topics.compacted_shares
    # 8,000 batches over 400 s of event time, of which about 5,000 are sent: all inside the
    # 300 s headline window, so that any event lost or counted twice shows in the comparison.
    events = share_batches(8000, T0, 400.0, seed=11)
    await produce_keyed(settings, topic, events[:500])
    flow = Flow(settings, events[500:])

    workers = {"w1": Worker(settings, tmp_path / "w1", "w1"),
               "w2": Worker(settings, tmp_path / "w2", "w2")}
    timings: dict[str, float] = {}
    try:
        await wait_for_snapshot(settings, offsets_reached(await partition_ends(settings, topic)),
                                90, list(workers.values()))
        flowing = asyncio.create_task(flow.run())
        await asyncio.sleep(2.0)

        # 1. SIGKILL mid-stream, restart a second later.
        killed_at = time.monotonic()
        workers["w1"].kill()
        at_kill = await partition_ends(settings, topic)
        await asyncio.sleep(1.0)
        workers["w1b"] = Worker(settings, tmp_path / "w1b", "w1b")
        timings["kill_to_recovered_s"] = await time_until_covered(
            settings, at_kill, killed_at, RECOVERY_BOUND_S + 60)

        # 2. One more worker joins while events flow.
        workers["w3"] = Worker(settings, tmp_path / "w3", "w3")
        timings["w3_ready_s"] = await wait_for_log(workers["w3"], "[^Worker]: Ready", 90)
        joined_at = time.monotonic()
        timings["join_to_recovered_s"] = await time_until_covered(
            settings, await partition_ends(settings, topic), joined_at, 90)

        # 3. One leaves cleanly (SIGTERM) while events flow.
        left_at = time.monotonic()
        workers["w2"].stop()
        timings["sigterm_exit_s"] = time.monotonic() - left_at
        timings["leave_to_recovered_s"] = await time_until_covered(
            settings, await partition_ends(settings, topic), left_at, 90)

        flow.stopping.set()
        await flowing
        sent = events[:500 + flow.sent]
        ends = await partition_ends(settings, topic)
        as_of = max(e["end"] for e in sent) - settings.settle_s
        snapshot = await wait_for_snapshot(settings, offsets_reached(ends, as_of), 90,
                                           list(workers.values()))
    finally:
        flow.stopping.set()
        for worker in workers.values():
            if worker.proc.poll() is None:
                worker.stop()
    print("\nworker faults (seconds): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + f"; {len(sent)} share_batch events")
    assert_matches_core(snapshot, core_regional_sample(sent, settings, as_of))
    assert timings["kill_to_recovered_s"] < RECOVERY_BOUND_S


async def test_sigterm_stops_a_busy_worker_promptly(
    isolated_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With events unacknowledged between checkpoints, SIGTERM still exits at once (they are
    redelivered to the next owner, whose checkpoint skips what was applied)."""
    for name, value in FAST_FAILOVER_ENV.items():
        monkeypatch.setenv(name, value)
    settings = isolated_settings
    topic = settings.topics.compacted_shares
    events = share_batches(4000, T0, 900.0, seed=12)
    await produce_keyed(settings, topic, events[:200])
    flow = Flow(settings, events[200:])
    worker = Worker(settings, tmp_path / "w1", "w1")
    try:
        await wait_for_snapshot(settings, offsets_reached(await partition_ends(settings, topic)),
                                90, [worker])
        flowing = asyncio.create_task(flow.run())
        await asyncio.sleep(3.0)  # events keep arriving between checkpoints
        asked_at = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=12.0)
        exit_s = time.monotonic() - asked_at
        log = worker.log_tail()
    finally:
        flow.stopping.set()
        if worker.proc.poll() is None:
            worker.kill()
        else:
            worker.stop()
    await flowing
    print(f"\nSIGTERM to exit of a busy worker: {exit_s:.1f} s")
    assert exit_s < 10.0, log


async def test_batches_of_an_aborted_compactor_transaction_are_not_credited(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """What a compactor killed (or cut off from the broker) mid-transaction leaves behind: its
    batches in the log, aborted. The worker must skip them (Faust reads read_uncommitted unless
    told otherwise: they were once credited, then credited again when re-sent)."""
    settings = isolated_settings
    topic = settings.topics.compacted_shares
    committed = share_batches(40, T0, 60.0, seed=13)
    aborted = share_batches(40, T0, 30.0, seed=14)  # inside the committed ones' time span
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                transactional_id=f"{settings.app_id}-aborting")
    await producer.start()
    try:
        async with producer.transaction():
            for event in committed[:20]:
                await producer.send(topic, orjson.dumps(event), key=event["pool"].encode())
        await producer.begin_transaction()
        for event in aborted:
            await producer.send(topic, orjson.dumps(event), key=event["pool"].encode())
        await producer.flush()
        await producer.abort_transaction()
        async with producer.transaction():
            for event in committed[20:]:
                await producer.send(topic, orjson.dumps(event), key=event["pool"].encode())
    finally:
        await producer.stop()
    worker = Worker(settings, tmp_path / "w1", "w1")
    try:
        as_of = max(e["end"] for e in committed) - settings.settle_s
        snapshot = await wait_for_snapshot(
            settings, lambda s: s["as_of"] == as_of, 90, [worker])
        await asyncio.sleep(3 * settings.snapshot_interval_s)  # everything read by now
        snapshot = read_snapshot(settings) or snapshot
        # The worker commits past the transaction markers and the aborted batches: only the
        # last marker of each partition (nothing read after it) may stay uncommitted.
        ends = await partition_ends(settings, topic)
        deadline = time.monotonic() + 4 * settings.checkpoint_interval_s + 10
        while True:
            done = await committed_offsets(settings, topic)
            behind = {p: end - done.get(p, 0) for p, end in ends.items() if end > 0}
            if all(n <= 1 for n in behind.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        worker.stop()
    assert_matches_core(snapshot, core_regional_sample(committed, settings, as_of))
    assert all(n <= 1 for n in behind.values()), f"uncommitted offsets per partition: {behind}"


# ---- a private broker that goes away for 30 s ---------------------------------------------------

OUTAGE_S = 30.0
SHARE_RATE_HZ = 200.0
MAX_IN_FLIGHT = 2000  # the producer's own bound on unacknowledged messages


@pytest.fixture()
def private_kafka_options() -> PrivateKafkaOptions:
    """Two partitions of each share topic, compacted every 0.2 s, stale after 5 s."""
    return PrivateKafkaOptions(settings={"partitions": Partitions(shares=2, compacted_shares=2),
                                         "compact_interval_s": 0.2, "stale_after_s": 5.0})


class ShareProducer:
    """A feed that keeps sending single shares through outages: idempotent, acks=all, long
    delivery timeout, and at most MAX_IN_FLIGHT unacknowledged messages (it waits, it does not
    drop). Records exactly which events Kafka acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.delivered: list[dict[str, Any]] = []
        self.failed: list[tuple[dict[str, Any], str]] = []
        self.send_retries = 0
        self.max_in_flight = 0
        self.max_in_flight_bytes = 0
        self.longest_wait_s = 0.0
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
            enable_idempotence=True, linger_ms=20, request_timeout_ms=120_000,
            retry_backoff_ms=500,
        )
        await producer.start()
        in_flight: dict[asyncio.Future[Any], tuple[dict[str, Any], int]] = {}
        rng = np.random.default_rng(21)
        started = time.monotonic()
        sent = 0
        try:
            while not self.stopping.is_set():
                due = started + sent / SHARE_RATE_HZ
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                event = {"type": "share", "ts": T0 + (time.monotonic() - started),
                         "pool": str(rng.choice(POOLS)), "region": str(rng.choice(REGIONS)),
                         "difficulty": float(rng.choice([16384.0, 65536.0, 262144.0]))}
                value = orjson.dumps(event)
                waited_from = time.monotonic()
                while len(in_flight) >= MAX_IN_FLIGHT:
                    done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    self._settle(done, in_flight)
                future = await self._send(producer, event, value)
                self.longest_wait_s = max(self.longest_wait_s, time.monotonic() - waited_from)
                in_flight[future] = (event, len(value))
                self.max_in_flight = max(self.max_in_flight, len(in_flight))
                self.max_in_flight_bytes = max(self.max_in_flight_bytes,
                                               sum(size for _, size in in_flight.values()))
                self._settle({f for f in in_flight if f.done()}, in_flight)
                sent += 1
            if in_flight:
                done, _ = await asyncio.wait(in_flight)
                self._settle(done, in_flight)
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, event: dict[str, Any],
                    value: bytes) -> asyncio.Future[Any]:
        """Hand one message to the client, retrying while its buffer cannot take it."""
        while True:
            try:
                future: asyncio.Future[Any] = await producer.send(
                    self.settings.topics.shares, value=value, key=event["pool"].encode())
                return future
            except KafkaTimeoutError:
                self.send_retries += 1

    def _settle(self, done: set[asyncio.Future[Any]],
                in_flight: dict[asyncio.Future[Any], tuple[dict[str, Any], int]]) -> None:
        for future in done:
            event, _ = in_flight.pop(future)
            error = future.exception()
            if error is None:
                self.delivered.append(event)
            else:
                self.failed.append((event, repr(error)))


async def read_topic(settings: Settings, topic: str, partitions: int
                     ) -> tuple[list[bytes], dict[int, int]]:
    """Every committed message of ``topic``, and per partition the offset after its last one (a
    transactional topic's end offset also counts commit markers, which no consumer sees)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        last = {tp.partition: -1 for tp in tps}
        values: list[bytes] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                values.extend(m.value for m in messages if m.value is not None)
                if messages:
                    last[tp.partition] = messages[-1].offset
        return values, {p: o + 1 for p, o in last.items()}
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()


async def group_caught_up(settings: Settings, group: str, topic: str, timeout_s: float) -> None:
    """Wait until ``group`` has committed every partition of ``topic`` to its end."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        ends = await partition_ends(settings, topic, settings.partitions.shares)
        deadline = time.monotonic() + timeout_s
        while True:
            committed = await admin.list_consumer_group_offsets(group)
            done = {tp.partition: meta.offset for tp, meta in committed.items()
                    if tp.topic == topic}
            if all(done.get(p, -1) >= end for p, end in ends.items() if end):
                return
            assert time.monotonic() < deadline, f"{group} stuck at {done}, ends {ends}"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def served_snapshot(api: httpx.AsyncClient) -> dict[str, Any] | None:
    response = await api.get("/v1/estimates/current")
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


class CountingHandler(logging.Handler):
    """Counts log records instead of keeping them (a client cut off from its broker logs
    thousands of lines a second)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def test_broker_down_for_30_s_pipeline_resumes_without_restart(
    private_kafka: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = private_kafka
    client_log = logging.getLogger("aiokafka")
    client_lines = CountingHandler()
    monkeypatch.setattr(client_log, "propagate", False)
    client_log.addHandler(client_lines)
    kafka = stack.kafka_service(settings)
    feed = ShareProducer(settings)
    compactor = Compactor(settings, tmp_path / "compactor", "outage")
    worker = Worker(settings, tmp_path / "worker", "w1")
    app = create_app(settings)
    observed: list[tuple[float, bool]] = []  # (monotonic time, served stale flag)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
                feeding = asyncio.create_task(feed.run())
                await wait_for_snapshot(settings, lambda s: not s["stale"], 90, [worker])

                async def watch() -> None:
                    while True:
                        snapshot = await served_snapshot(api)
                        if snapshot is not None:
                            observed.append((time.monotonic(), bool(snapshot["stale"])))
                        await asyncio.sleep(0.5)

                watching = asyncio.create_task(watch())
                await asyncio.sleep(10.0)
                stopped_at = time.monotonic()
                lines_before = client_lines.count
                await asyncio.to_thread(stack.stop_service, kafka, settings)
                down_at = time.monotonic()
                await asyncio.sleep(OUTAGE_S)
                await asyncio.to_thread(stack.start_kafka, settings)
                up_at = time.monotonic()
                outage_lines = client_lines.count - lines_before
                fresh_at = None
                deadline = up_at + 90
                while fresh_at is None:
                    assert time.monotonic() < deadline, (
                        f"still stale 90 s after the broker came back\n{worker.log_tail()}\n"
                        f"{compactor.log_tail()}")
                    assert worker.proc.poll() is None, f"worker exited\n{worker.log_tail()}"
                    assert compactor.proc.poll() is None, (
                        f"compactor exited\n{compactor.log_tail()}")
                    fresh_at = next((t for t, stale in observed if not stale and t > up_at),
                                    None)
                    await asyncio.sleep(0.5)
                await asyncio.sleep(10.0)
                feed.stopping.set()
                await feeding
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching

                await group_caught_up(settings, f"{settings.app_id}-compactor",
                                      settings.topics.shares, 60)
                shares, _ = await read_topic(settings, settings.topics.shares,
                                             settings.partitions.shares)
                batches, ends = await read_topic(settings, settings.topics.compacted_shares,
                                                 settings.partitions.compacted_shares)
                as_of = max(e["ts"] for e in feed.delivered) - settings.settle_s
                final = await wait_for_snapshot(settings, offsets_reached(ends, as_of), 90,
                                                [worker])
                alive = (worker.proc.poll() is None, compactor.proc.poll() is None)
    finally:
        feed.stopping.set()
        worker.stop()
        compactor.stop()
        client_log.removeHandler(client_lines)
    during = [stale for t, stale in observed if down_at + 2 * settings.stale_after_s < t < up_at]
    print(f"\nbroker outage: stop took {down_at - stopped_at:.1f} s, down {OUTAGE_S:.0f} s, "
          f"restart took {up_at - down_at - OUTAGE_S:.1f} s; served fresh again "
          f"{fresh_at - up_at:.1f} s after the broker answered; producer: "
          f"{len(feed.delivered)} delivered, {len(feed.failed)} failed, "
          f"{feed.send_retries} send retries, max {feed.max_in_flight} in flight "
          f"({feed.max_in_flight_bytes / 1024:.0f} KiB), longest wait {feed.longest_wait_s:.1f} "
          f"s; the producer's client logged {outage_lines} warnings/errors during the outage")
    assert alive == (True, True)
    assert during and all(during), observed  # stale: true while the broker is away
    assert not feed.failed, feed.failed[:5]
    assert feed.max_in_flight <= MAX_IN_FLIGHT
    # Kafka holds each delivered share once.
    sent = sorted((e["ts"], e["pool"]) for e in feed.delivered)
    assert sorted((e["ts"], e["pool"]) for e in map(orjson.loads, shares)) == sent
    # The compactor's committed batches sum exactly those shares, per pool and region.
    committed = [orjson.loads(b) for b in batches]
    assert totals_by_key(committed) == pytest.approx(totals_by_key(feed.delivered), rel=1e-12)
    # The worker credited exactly the committed batches. (The core on the single shares would
    # differ slightly at the right edge: a batch straddling the evaluation instant counts whole.)
    assert_matches_core(final, core_regional_sample(committed, settings, as_of))


def totals_by_key(events: list[dict[str, Any]]) -> dict[str, float]:
    """Share count, Σd and Σd² per (pool, region) of single shares or of batches."""
    out: dict[str, float] = {}
    for e in events:
        key = f"{e['pool']}|{e['region']}"
        if e["type"] == "share":
            count, d1, d2 = 1, e["difficulty"], e["difficulty"] ** 2
        else:
            count, d1, d2 = e["count"], e["difficulty_sum"], e["difficulty_sq_sum"]
        for name, value in (("n", count), ("d", d1), ("d2", d2)):
            out[f"{key}|{name}"] = out.get(f"{key}|{name}", 0.0) + value
    return out


async def test_commits_keep_up_with_many_small_transactions(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    """One compactor flush is one transaction, with its marker in every partition. Faust's
    commit passed one run of acknowledged offsets per commit interval, so with two flushes a
    second the committed offsets fell further behind for ever (every restart re-reading it
    all); they must reach the end of the topic (bar its last marker) soon after the data."""
    settings = isolated_settings
    topic = settings.topics.compacted_shares
    events = share_batches(240, T0, 120.0, seed=15)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                transactional_id=f"{settings.app_id}-small")
    await producer.start()
    try:
        for start in range(0, len(events), 4):  # 60 transactions of 4 batches
            async with producer.transaction():
                for event in events[start:start + 4]:
                    await producer.send(topic, orjson.dumps(event), key=event["pool"].encode())
    finally:
        await producer.stop()
    ends = await partition_ends(settings, topic)
    worker = Worker(settings, tmp_path / "w1", "w1")
    try:
        as_of = max(e["end"] for e in events) - settings.settle_s
        await wait_for_snapshot(settings, lambda s: s["as_of"] == as_of, 90, [worker])
        covered_at = time.monotonic()
        while True:
            done = await committed_offsets(settings, topic)
            behind = {p: end - done.get(p, 0) for p, end in ends.items() if end > 0}
            if all(n <= 1 for n in behind.values()) or time.monotonic() - covered_at > 12:
                break
            await asyncio.sleep(0.5)
    finally:
        worker.stop()
    assert all(n <= 1 for n in behind.values()), f"uncommitted offsets per partition: {behind}"
