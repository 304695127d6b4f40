"""Ownership, recovery gating and the stalled-recovery watchdog of a worker's inputs."""

from __future__ import annotations

from streams.pipeline.ownership import PartitionOwnership, RecoveryWatchdog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_events_are_accepted_from_recovery_of_the_assignment_until_revocation() -> None:
    clock = Clock()
    ownership = PartitionOwnership(clock)
    ownership.assign([0, 2], generation=5)
    assert ownership.owns(2) and not ownership.owns(1) and not ownership.accepting
    ownership.recovered(generation=4)  # an older rebalance's recovery
    assert not ownership.accepting
    ownership.recovered(generation=5)
    assert ownership.accepting
    ownership.revoke([2])
    assert not ownership.accepting and ownership.owned == {0}


def test_a_recovery_that_stops_moving_is_reported_once_past_the_limit() -> None:
    clock = Clock()
    ownership = PartitionOwnership(clock)
    remaining = [50]
    watchdog = RecoveryWatchdog(90.0, lambda: remaining[0], [ownership], clock)
    ownership.assign([0], generation=1)
    clock.now += 60.0
    remaining[0] = 10  # still reading
    assert watchdog.stalled() is None
    clock.now += 80.0  # 140 s assigned, 80 s without progress
    assert watchdog.stalled() is None
    clock.now += 20.0
    assert watchdog.stalled() == (100.0, 10)


def test_a_long_recovery_that_reads_or_a_recovered_worker_is_left_alone() -> None:
    clock = Clock()
    ownership = PartitionOwnership(clock)
    remaining = [1000]
    watchdog = RecoveryWatchdog(90.0, lambda: remaining[0], [ownership], clock)
    ownership.assign([0], generation=1)
    for _ in range(10):
        clock.now += 50.0
        remaining[0] -= 90
        assert watchdog.stalled() is None
    ownership.recovered(generation=1)
    clock.now += 500.0
    assert watchdog.stalled() is None
