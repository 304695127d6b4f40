"""The apply / checkpoint / commit loop of one checkpointed input topic.

Exactly-once state from at-least-once delivery (see ``streams.pipeline.state``): events are
taken without acknowledging them, those at or past their partition's ``next_offset`` are
applied, and at the checkpoint interval each partition's state is written to its changelog;
only once that is flushed are the events released and the offset committed. The broker side
is an ``InputPort`` (Faust's in ``streams.pipeline.faust_compat``; an in-memory one in the
tests), so this loop runs and is tested without a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from streams.contracts import DeadLetter, InvalidEvent
from streams.core.shares import ShareOutcome
from streams.metrics import (
    CHECKPOINTS,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
    OFFSET_REREADS,
    SHARE_BATCHES_APPLIED,
)
from streams.pipeline.ownership import PartitionOwnership
from streams.pipeline.state import Admission, ResumeCheck

log = logging.getLogger("hashatlas.worker")


class PartitionState(Protocol):
    """What the loop needs of a partition's state (``ShareBatchPartition`` and the others)."""

    next_offset: int
    unacked: list[Any]
    last_checkpoint: float

    def checkpoint(self) -> bytes: ...


class InputPort(Protocol):
    """The broker side of one input: its topic, checkpoint table, consumer and producer."""

    topic_name: str

    def generation(self) -> int: ...
    def read_checkpoint(self, partition: int) -> bytes | None: ...
    def write_checkpoint(self, partition: int, value: bytes) -> None: ...
    def release(self, events: Iterable[Any]) -> None: ...
    async def commit(self, offsets: Mapping[int, int]) -> bool: ...
    async def seek(self, partition: int, offset: int) -> None: ...
    def highwater(self, partition: int) -> int | None: ...
    async def flush(self) -> None: ...
    async def send(self, topic: str, body: bytes) -> None: ...


S = TypeVar("S", bound=PartitionState)


@dataclass
class BatchTally:
    """What one batch of events came to, counted per batch (an inc() per event costs)."""

    dead_letters: list[bytes] = field(default_factory=list)
    reread: set[int] = field(default_factory=set)
    credited: int = 0
    late: int = 0


class CheckpointLoop(Generic[S]):
    """One input topic's per-partition states, applied, checkpointed and committed."""

    def __init__(self, port: InputPort, restore: Callable[[bytes | None], S],
                 apply: Callable[[S, bytes | None, float | None], object], *,
                 checkpoint_interval_s: float, dead_letter_topic: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.port = port
        self.topic_name = port.topic_name
        self.restore = restore
        self.apply = apply
        self.checkpoint_interval_s = checkpoint_interval_s
        self.dead_letter_topic = dead_letter_topic
        self.clock = clock
        self.ownership = PartitionOwnership(clock)
        self.states: dict[int, S] = {}
        self.resume_check = ResumeCheck()
        self.committed: dict[int, int] = {}
        self.started = False  # its agent is running
        self.last_event_wall = 0.0

    # ---- rebalances ------------------------------------------------------------------------

    def owns(self, partition: int) -> bool:
        return self.ownership.owns(partition)

    def assign(self, partitions: Iterable[int]) -> None:
        self.ownership.assign(partitions, self.port.generation())

    def recovered(self) -> None:
        self.ownership.recovered(self.port.generation())

    def revoke(self, partitions: Iterable[int]) -> None:
        """Drop the revoked partitions' states; a new owner (maybe this worker again)
        restores them from their checkpoints."""
        partitions = list(partitions)
        self.ownership.revoke(partitions)
        for partition in partitions:
            self.resume_check.forget(partition)
            self.committed.pop(partition, None)
            state = self.states.pop(partition, None)
            if state is not None and state.unacked:
                self.port.release(state.unacked)
                state.unacked = []

    # ---- states ----------------------------------------------------------------------------

    def state(self, partition: int) -> S:
        state = self.states.get(partition)
        if state is None:
            state = self.restore(self.port.read_checkpoint(partition))
            self.resume_check.forget(partition)
            self.states[partition] = state
        return state

    def restore_owned(self) -> None:
        """Load the checkpoint of every owned partition, also those that receive nothing new."""
        if not self.ownership.accepting:
            return
        for partition in list(self.ownership.owned):
            self.state(partition)

    def owned_states(self) -> list[tuple[int, S]]:
        """The states of the partitions owned now (restored ones only)."""
        return [(p, s) for p, s in list(self.states.items()) if self.owns(p)]

    def lag(self) -> int:
        """Messages of the owned partitions not applied yet (end of log − next offset)."""
        behind = 0
        for partition in list(self.ownership.owned):
            state = self.states.get(partition)
            if state is not None:
                end = self.port.highwater(partition)
                if end is not None:
                    behind += max(0, end - state.next_offset)
        return behind

    # ---- applying --------------------------------------------------------------------------

    async def process(self, events: list[Any]) -> None:
        """Apply a batch, dead-letter what cannot be used, checkpoint when due."""
        if not self.ownership.accepting:
            # Taken before the rebalance stopped the flow: every state is revoked (eager
            # rebalancing), and Faust seeks to the last commit before the flow resumes.
            self.port.release(events)
            return
        tally = BatchTally()
        for event in events:
            self._take(event, tally)
        for partition in tally.reread:
            await self.port.seek(partition, self.resume_check.reread_from(partition))
        await self._account(events, tally)
        await self.checkpoint_due()

    def _take(self, event: Any, tally: BatchTally) -> None:
        """Apply one event if it is next in its owned partition; release it otherwise."""
        message = event.message
        partition = message.partition
        if not self.owns(partition):
            self.port.release([event])  # revoked while buffered: its new owner applies it
            return
        state = self.state(partition)
        if message.offset < state.next_offset:
            self.port.release([event])  # already inside the restored checkpoint
            return
        admission = self.resume_check.admit(partition, state.next_offset, message.offset)
        if admission is not Admission.APPLY:
            if admission is Admission.REREAD:
                OFFSET_REREADS.labels(self.topic_name).inc()
                log.info("%s partition %d goes on at offset %d, not %d: reading it again",
                         self.topic_name, partition, message.offset, state.next_offset)
            self.port.release([event])
            tally.reread.add(partition)
            return
        self._apply(state, event, tally)

    def _apply(self, state: S, event: Any, tally: BatchTally) -> None:
        message = event.message
        try:
            outcome = self.apply(state, message.value, message.timestamp)
            if outcome is ShareOutcome.CREDITED:
                tally.credited += 1
            elif isinstance(outcome, ShareOutcome):
                tally.late += 1  # late or otherwise not credited
        except InvalidEvent as error:
            letter = DeadLetter.of(self.topic_name, message.partition, message.offset,
                                   error, message.value or b"")
            tally.dead_letters.append(letter.model_dump_json().encode())
        state.next_offset = message.offset + 1
        state.unacked.append(event)

    async def _account(self, events: list[Any], tally: BatchTally) -> None:
        """Count the batch and send its dead letters."""
        if tally.credited:
            SHARE_BATCHES_APPLIED.labels("credited").inc(tally.credited)
        if tally.late:
            SHARE_BATCHES_APPLIED.labels("late").inc(tally.late)
        if events:
            EVENTS_CONSUMED.labels(self.topic_name).inc(len(events))
            self.last_event_wall = time.time()
        for body in tally.dead_letters:
            await self.port.send(self.dead_letter_topic, body)
        EVENTS_DEAD_LETTERED.labels(self.topic_name).inc(len(tally.dead_letters))

    async def seek_pending_rereads(self) -> None:
        """Seek again where a re-read has not begun: Faust drops what the seek brings if a
        record fetched before it arrives after it (its read position jumps past them)."""
        for partition in self.resume_check.pending():
            if self.owns(partition):
                await self.port.seek(partition, self.resume_check.reread_from(partition))

    # ---- checkpointing ---------------------------------------------------------------------

    async def checkpoint_due(self, force: bool = False) -> None:
        """Checkpoint the owned states with events applied since their last checkpoint (all of
        them if ``force``, else those older than the interval), in numbered steps; a crash
        between any two leaves the committed offset at or behind the changelog's checkpoint:

        1. write each such state, with its next offset, to its changelog;
        2. flush the producer: the checkpoints are on the broker;
        3. release the events they cover (without acknowledging: Faust commits nothing);
        4. commit each owned partition at its checkpointed next offset."""
        now = self.clock()
        covered: list[Any] = []
        for partition, state in self.owned_states():
            if not state.unacked:
                continue
            if not force and now - state.last_checkpoint < self.checkpoint_interval_s:
                continue
            self.port.write_checkpoint(partition, state.checkpoint())  # 1
            covered.extend(state.unacked)
            state.unacked = []
            state.last_checkpoint = now
            self.resume_check.checkpointed(partition)
            CHECKPOINTS.inc()
        if covered:
            await self.port.flush()  # 2
            self.port.release(covered)  # 3
        await self.commit_checkpointed()  # 4

    async def commit_checkpointed(self) -> None:
        """Commit each owned partition at its state's next offset, once a flushed checkpoint
        covers it (no event applied since).

        Not Faust's commit: it commits offsets from the events acknowledged and from the ones
        it saw skipped, and misses transaction markers (none counted after offset 0, nor where
        it seeks onto one): a partition's commit then stops for good (seen with many small
        compactor transactions) and every restart re-reads all since."""
        offsets = {
            partition: state.next_offset for partition, state in self.owned_states()
            if not state.unacked and state.next_offset > self.committed.get(partition, -1)
        }
        if offsets and await self.port.commit(offsets):
            self.committed.update(offsets)
