"""Which partitions of one input a worker owns, and whether it may apply their events yet.

Rebalances move partitions between workers (eager: every partition is revoked, then the new
assignment arrives, then Faust reads the changelogs back). Events are applied only between the
end of that recovery and the next revocation: before it, a state restored from a table still
catching up would start from an old checkpoint and miss the events between it and the last
commit; after the revocation, the partition's next owner applies them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class PartitionOwnership:
    """Ownership and recovery gating of one input topic's partitions on this worker."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.owned: set[int] = set()
        self.accepting = False
        self.assigned_generation: int | None = None
        self.assigned_at = 0.0

    def owns(self, partition: int) -> bool:
        """Owned from the rebalance that assigned it until the next one starts revoking.

        Not ``consumer.assignment()``: that still lists every partition after Faust's
        revocation is done, until the new assignment arrives, and an event delivered in that gap
        would be applied to a state nobody checkpoints any more."""
        return partition in self.owned

    def assign(self, partitions: Iterable[int], generation: int) -> None:
        self.owned = set(partitions)
        self.assigned_generation = generation
        self.assigned_at = self.clock()

    def recovered(self, generation: int) -> None:
        """Faust has read the changelogs back: states may be restored, events applied.

        Only for the assignment of that generation. (Faust's own ``recovery.completed`` stays
        set from the previous rebalance, and ``app.rebalancing`` stays set a while after the
        flow resumes.)"""
        if self.assigned_generation == generation:
            self.accepting = True

    def revoke(self, partitions: Iterable[int]) -> None:
        """A rebalance starts: nothing is applied until the next assignment has recovered."""
        self.accepting = False
        self.assigned_generation = None
        self.owned.difference_update(partitions)

    def recovery_stalled_s(self) -> float:
        """How long this worker has held an assignment without Faust finishing its recovery."""
        if self.accepting or self.assigned_generation is None:
            return 0.0
        return self.clock() - self.assigned_at


class RecoveryWatchdog:
    """Tells a stalled changelog recovery from a long one.

    Faust's recovery can hang after quick successive rebalances (no record arrives for an
    assigned changelog partition). A worker stuck so holds its partitions and nothing moves:
    better to stop, hand them over, and be restarted. A recovery that still reads (its count
    of remaining records moves) is left alone."""

    def __init__(self, stall_s: float, remaining: Callable[[], int],
                 ownerships: Iterable[PartitionOwnership],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self.remaining = remaining
        self.ownerships = list(ownerships)
        self.clock = clock
        self.last_remaining = -1
        self.moved_at = clock()

    def stalled(self) -> tuple[float, int] | None:
        """(seconds without progress, records left) once past ``stall_s``, else None."""
        remaining = self.remaining()
        now = self.clock()
        if remaining != self.last_remaining:
            self.last_remaining, self.moved_at = remaining, now
        waiting = min(max(o.recovery_stalled_s() for o in self.ownerships),
                      now - self.moved_at)
        return (waiting, remaining) if waiting > self.stall_s else None
