"""The worker's apply / checkpoint / commit loop without a broker (as bytewax tests resume).

An in-memory broker stands for Kafka and Faust: each partition's log, the committed offsets,
and a changelog where a checkpoint is durable only once flushed. A worker (a
``CheckpointLoop`` over an in-memory ``InputPort``) reads from the committed offsets, is
aborted mid-way (what it held in memory and did not flush is lost), and a new one resumes: each
partition's state must hold every valid record exactly once, and the committed offsets must
never pass a durable checkpoint and end at each log's end.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from streams.contracts import InvalidEvent
from streams.pipeline.checkpoint_loop import CheckpointLoop
from streams.pipeline.state import ShareBatchPartition
from streams.settings import Settings

DEAD_LETTER = "dead-letter"
INTERVAL_S = 3.0  # checkpoint interval; the fake clock moves 1 s per batch


class Abort(Exception):
    """The worker process dies here."""


@dataclass
class Message:
    partition: int
    offset: int
    value: bytes | None
    timestamp: float | None = None


@dataclass
class Event:
    message: Message


@dataclass
class Seen:
    """A partition's state in these tests: the records it applied, in order."""

    offsets: list[int] = field(default_factory=list)
    next_offset: int = 0
    unacked: list[Any] = field(default_factory=list)
    last_checkpoint: float = 0.0

    def apply(self, raw: bytes | None, record_time_s: float | None = None) -> None:
        if raw is None or not raw.isdigit():
            raise InvalidEvent("$", "not a record of this test")
        self.offsets.append(int(raw))

    def checkpoint(self) -> bytes:
        return json.dumps({"offsets": self.offsets, "next_offset": self.next_offset}).encode()

    @classmethod
    def restore(cls, raw: bytes | None) -> Seen:
        if raw is None:
            return cls()
        body = json.loads(raw)
        return cls(offsets=body["offsets"], next_offset=body["next_offset"])


class Broker:
    """The logs, the committed offsets and the durable changelog of one input topic, whose
    partitions' states ``restore`` reads and ``apply`` changes."""

    def __init__(self, logs: Mapping[int, list[bytes | None]],
                 restore: Callable[[bytes | None], Any] = Seen.restore,
                 apply: Callable[[Any, bytes | None, float | None], object] = Seen.apply) -> None:
        self.logs = dict(logs)
        self.restore = restore
        self.apply = apply
        self.committed: dict[int, int] = {}
        self.changelog: dict[int, bytes] = {}
        self.dead_letters: list[bytes] = []
        self.generation = 0
        self.commits: list[dict[int, int]] = []

    def durable_next_offset(self, partition: int) -> int:
        raw = self.changelog.get(partition)
        return int(self.restore(raw).next_offset) if raw is not None else 0


class Worker:
    """One worker's consumer (it delivers from the committed offsets, as Faust seeks there on
    assignment) and its ``InputPort``; ``abort_at`` names a port call that kills it."""

    topic_name = "share-batches"

    def __init__(self, broker: Broker, abort_at: str | None = None) -> None:
        self.broker = broker
        self.abort_at = abort_at
        self.positions: dict[int, int] = {}
        self.unflushed: dict[int, bytes] = {}
        self.table: dict[int, bytes] = dict(broker.changelog)  # read back by recovery
        self.released: list[Event] = []
        self.seeks: list[tuple[int, int]] = []
        self.clock_s = 0.0
        self.loop: CheckpointLoop[Any] = CheckpointLoop(
            self, broker.restore, broker.apply, checkpoint_interval_s=INTERVAL_S,
            dead_letter_topic=DEAD_LETTER, clock=lambda: self.clock_s)

    # ---- InputPort --------------------------------------------------------------------------

    def generation(self) -> int:
        return self.broker.generation

    def read_checkpoint(self, partition: int) -> bytes | None:
        return self.table.get(partition)

    def write_checkpoint(self, partition: int, value: bytes) -> None:
        self.table[partition] = value
        self.unflushed[partition] = value

    def release(self, events: Iterable[Any]) -> None:
        self.released.extend(events)

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        if self.abort_at == "commit":
            raise Abort
        for partition, offset in offsets.items():
            assert offset <= self.broker.durable_next_offset(partition), "commit past checkpoint"
        self.broker.committed.update(offsets)
        self.broker.commits.append(dict(offsets))
        return True

    async def seek(self, partition: int, offset: int) -> None:
        self.seeks.append((partition, offset))
        self.positions[partition] = offset

    def highwater(self, partition: int) -> int | None:
        return len(self.broker.logs[partition])

    async def flush(self) -> None:
        if self.abort_at == "flush":
            raise Abort
        self.broker.changelog.update(self.unflushed)
        self.unflushed.clear()

    async def send(self, topic: str, body: bytes) -> None:
        assert topic == DEAD_LETTER
        self.broker.dead_letters.append(body)

    # ---- the consumer -----------------------------------------------------------------------

    def assigned(self, partitions: Iterable[int]) -> None:
        """A rebalance gives this worker ``partitions``; their recovery completes at once."""
        partitions = list(partitions)
        self.broker.generation += 1
        self.loop.assign(partitions)
        self.positions = {p: self.broker.committed.get(p, 0) for p in partitions}
        self.table = dict(self.broker.changelog)
        self.loop.recovered()

    def take(self, count: int) -> list[Event]:
        """Up to ``count`` records, round-robin over the partitions assigned."""
        events: list[Event] = []
        while len(events) < count:
            before = len(events)
            for partition, position in sorted(self.positions.items()):
                log = self.broker.logs[partition]
                if position < len(log) and len(events) < count:
                    events.append(Event(Message(partition, position, log[position])))
                    self.positions[partition] = position + 1
            if len(events) == before:
                break
        return events

    async def run(self, batch: int = 3, batches: int | None = None) -> None:
        """Deliver batches (all there are, or ``batches`` of them), then checkpoint."""
        done = 0
        while (events := self.take(batch)) and (batches is None or done < batches):
            self.clock_s += 1.0
            await self.loop.process(events)
            done += 1
        if batches is None:
            self.clock_s += 1.0
            await self.loop.checkpoint_due(force=True)


def logs_with_bad_records(partitions: int = 2, records: int = 20) -> dict[int, list[bytes | None]]:
    """Each record's value is its offset; every seventh is unusable (dead-lettered)."""
    return {p: [b"junk" if (o + p) % 7 == 6 else str(o).encode() for o in range(records)]
            for p in range(partitions)}


def valid_offsets(log: list[bytes | None]) -> list[int]:
    return [o for o, value in enumerate(log) if value is not None and value.isdigit()]


def assert_exactly_once(broker: Broker) -> None:
    for partition, log in broker.logs.items():
        state = Seen.restore(broker.changelog[partition])
        assert state.offsets == valid_offsets(log), partition
        assert state.next_offset == len(log)
        assert broker.committed[partition] == len(log)


async def test_a_run_without_faults_applies_and_commits_every_record_once() -> None:
    broker = Broker(logs_with_bad_records())
    worker = Worker(broker)
    worker.assigned([0, 1])
    await worker.run()
    assert_exactly_once(broker)
    bad = sum(len(log) - len(valid_offsets(log)) for log in broker.logs.values())
    assert len(broker.dead_letters) == bad
    assert {json.loads(letter)["offset"] for letter in broker.dead_letters} == {
        o for log in broker.logs.values() for o, v in enumerate(log) if v == b"junk"}
    assert not worker.loop.states[0].unacked and len(worker.released) == 40


@pytest.mark.parametrize("abort_at", ["batch", "flush", "commit"])
@pytest.mark.parametrize("batches", [1, 4, 8])
async def test_a_worker_aborted_mid_way_resumes_exactly_once(abort_at: str,
                                                             batches: int) -> None:
    broker = Broker(logs_with_bad_records())
    first = Worker(broker, abort_at=None if abort_at == "batch" else abort_at)
    first.assigned([0, 1])
    with contextlib.suppress(Abort):  # "batch": dies after these, whatever is pending
        await first.run(batches=batches)
    assert all(broker.committed.get(p, 0) <= broker.durable_next_offset(p) for p in (0, 1))
    if abort_at == "commit" and batches > INTERVAL_S:
        # The checkpoint was flushed, the commit never made: the log is read again from
        # behind the checkpoint, and what it covers must be skipped, not applied twice.
        assert any(broker.committed.get(p, 0) < broker.durable_next_offset(p) for p in (0, 1))
    second = Worker(broker)
    second.assigned([0, 1])
    await second.run()
    assert_exactly_once(broker)


async def test_every_commit_follows_a_flushed_checkpoint_of_at_least_that_offset() -> None:
    broker = Broker(logs_with_bad_records(records=40))
    worker = Worker(broker)
    worker.assigned([0, 1])
    await worker.run(batch=2)
    assert len(broker.commits) > 3  # checkpointed every few batches, not only at the end
    for offsets in broker.commits:  # (Worker.commit asserted each against the changelog)
        assert all(0 < offset <= 40 for offset in offsets.values())
    assert_exactly_once(broker)


async def test_a_rebalance_moves_a_partition_without_loss_or_double_counting() -> None:
    broker = Broker(logs_with_bad_records(records=30))
    a, b = Worker(broker), Worker(broker)
    a.assigned([0, 1])
    await a.run(batches=5)  # a checkpoint at 3 s; later records of both applied, unflushed
    buffered = a.take(4)  # fetched before the rebalance, delivered after it
    a.loop.revoke([0, 1])
    assert a.loop.states == {} and all(not a.loop.owns(p) for p in (0, 1))
    await a.loop.process(buffered)  # revoked: released to their next owner, not applied
    assert all(event in a.released for event in buffered)
    a.assigned([0])
    b.assigned([1])
    await a.run()
    await b.run()
    assert_exactly_once(broker)
    assert set(a.loop.states) == {0} and set(b.loop.states) == {1}


async def test_events_taken_before_recovery_completes_are_released_unapplied() -> None:
    broker = Broker(logs_with_bad_records())
    worker = Worker(broker)
    broker.generation += 1
    worker.loop.assign([0, 1])  # assigned, changelog not read back yet
    worker.positions = {0: 0, 1: 0}
    early = worker.take(4)
    await worker.loop.process(early)
    assert worker.loop.states == {} and worker.released == early
    worker.loop.recovered()
    worker.positions = {0: 0, 1: 0}  # Faust seeks to the committed offsets again
    await worker.run()
    assert_exactly_once(broker)


async def test_recovery_of_an_older_assignment_does_not_open_the_gate() -> None:
    broker = Broker(logs_with_bad_records())
    worker = Worker(broker)
    worker.assigned([0, 1])
    worker.loop.revoke([0, 1])
    broker.generation += 1
    worker.loop.assign([0])
    broker.generation += 1  # another rebalance began before this one's recovery completed
    worker.loop.recovered()
    assert not worker.loop.ownership.accepting
    assert worker.loop.ownership.recovery_stalled_s() >= 0.0


async def test_a_resume_past_the_checkpoint_is_read_again_from_it() -> None:
    """Faust may resume a partition past its last commit after quick rebalances: the loop
    does not apply across the gap but seeks back, and applies what the re-read brings."""
    broker = Broker(logs_with_bad_records(partitions=1))
    first = Worker(broker)
    first.assigned([0])
    await first.run(batch=4, batches=4)  # checkpointed and committed part of the way
    resumed_at = broker.committed[0]
    assert 0 < resumed_at < 20
    second = Worker(broker)
    second.assigned([0])
    second.positions[0] = resumed_at + 3  # three records jumped over
    await second.run(batch=2)
    assert second.seeks and second.seeks[0] == (0, resumed_at - 1)
    assert_exactly_once(broker)


async def test_share_windows_resumed_after_an_abort_equal_an_uninterrupted_run() -> None:
    """The worker's real share state: aborted between flush and commit, then resumed, its
    partial equals that of one pass over the same batches."""
    settings = Settings()
    t0 = time.time() - 3600.0
    logs: dict[int, list[bytes | None]] = {p: [] for p in range(2)}
    for i in range(60):
        pool = ("foundry", "antpool", "viabtc")[i % 3]
        logs[i % 2].append(orjson.dumps({
            "type": "share_batch", "pool": pool, "region": ("US", "KZ")[i % 2],
            "start": t0 + 10.0 * i, "end": t0 + 10.0 * i + 9.0, "count": 3,
            "difficulty_sum": 3.0e6, "difficulty_sq_sum": 3.0e12}))

    def restore(raw: bytes | None) -> ShareBatchPartition:
        return ShareBatchPartition.restore(raw, settings)

    broker = Broker(logs, restore, ShareBatchPartition.apply)
    first = Worker(broker, abort_at="commit")
    first.assigned([0, 1])
    with contextlib.suppress(Abort):
        await first.run(batch=5, batches=8)
    assert broker.changelog, "a checkpoint was flushed before the abort"
    second = Worker(broker)
    second.assigned([0, 1])
    await second.run(batch=5)

    t_eval = t0 + 600.0
    for partition, log in logs.items():
        reference = restore(None)
        for raw in log:
            reference.apply(raw)
        resumed = restore(broker.changelog[partition])
        assert resumed.next_offset == broker.committed[partition] == len(log)
        assert resumed.partial(t_eval, settings.windows_s) == reference.partial(
            t_eval, settings.windows_s)
        assert resumed.partial(t_eval, settings.windows_s).windows[300.0]
