"""The worker's own commits also prune Faust's record of skipped offsets (#18).

Faust's consumer notes each jump in a partition's offsets (on ``share-batches``: the marker of
every compactor transaction, one a second per partition) as an interval in a tree that only
Faust's own commit prunes. The worker commits its checkpointed offsets itself, so the trees grew
without end (seen with tracemalloc in the soak). Here Faust's real bookkeeping (its
``Consumer._add_gap``) runs beside the worker's real commit step for a day's worth of markers
compressed into a loop; what stays must be bounded by what arrived since the last commit.
"""

from __future__ import annotations

from collections import defaultdict

from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from streams.pipeline.faust_compat import FaustInput

TOPIC = "share-batches"
PARTITIONS = 4
FLUSHES = 3_000  # compactor transactions, each one batch then a marker in every partition
FLUSHES_PER_CHECKPOINT = 2  # checkpoint_interval_s 2 s, a flush every 1 s


class FaustGapBookkeeping:
    """The part of Faust's consumer the worker touches: its gap trees, filled by Faust's own
    ``_add_gap``, and ``_commit``, which here always succeeds (records what it was given)."""

    def __init__(self) -> None:
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self.commits: list[dict[TP, int]] = []

    async def add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        await Consumer._add_gap(self, tp, offset_from, offset_to)  # type: ignore[arg-type]

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        for tp, offset in offsets.items():
            self._committed_offset[tp] = offset - 1
        return True

    def intervals(self) -> int:
        return sum(len(tree) for tree in self._gap.values())


class Owner:
    """What ``FaustInput.commit`` reads of the Faust app."""

    def __init__(self, consumer: FaustGapBookkeeping) -> None:
        self.consumer = consumer


def share_batches_input(consumer: FaustGapBookkeeping) -> FaustInput:
    """The worker's share-batches input without a Faust app around it (its commit only)."""
    port: FaustInput = FaustInput.__new__(FaustInput)
    port.app = Owner(consumer)  # type: ignore[assignment]
    port.topic_name = TOPIC
    return port


async def test_the_worker_s_commits_keep_faust_s_gap_trees_bounded() -> None:
    consumer = FaustGapBookkeeping()
    port = share_batches_input(consumer)
    most = 0
    next_offsets: dict[int, int] = {}
    for flush in range(FLUSHES):
        for partition in range(PARTITIONS):
            tp = TP(TOPIC, partition)
            record = 2 * flush  # the batch; 2 * flush + 1 is the transaction's marker
            if flush:  # Faust's fetch loop: the record after a marker jumps one offset
                await consumer.add_gap(tp, record - 1, record - 1)
            next_offsets[partition] = record + 1  # applied; checkpointed at the next commit
        if flush % FLUSHES_PER_CHECKPOINT == FLUSHES_PER_CHECKPOINT - 1:
            assert await port.commit(next_offsets)
        most = max(most, consumer.intervals())
    assert len(consumer.commits) == FLUSHES // FLUSHES_PER_CHECKPOINT
    assert consumer.commits[-1] == {TP(TOPIC, p): 2 * FLUSHES - 1 for p in range(PARTITIONS)}
    # At most the markers since the last commit, per partition (without pruning: 2,999 each).
    assert most <= PARTITIONS * FLUSHES_PER_CHECKPOINT
