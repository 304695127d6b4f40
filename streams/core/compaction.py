"""Summing single shares into ``share_batch`` totals, vectorised.

A Faust agent pays ~140 µs of bookkeeping per message, so single shares are summed per
(pool, region, time bucket) before they reach it. Buckets are aligned to the share windows' fine
buckets, and each batch spans only the first to the last share it holds, so a batch lands in
exactly the bucket its shares would have: the estimate is the same as from the shares themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ShareTotals:
    """Per-group totals: ``key_ids[i]`` summed over ``[start[i], end[i]]``."""

    key_ids: npt.NDArray[np.int64]
    start: npt.NDArray[np.float64]
    end: npt.NDArray[np.float64]
    count: npt.NDArray[np.int64]
    difficulty_sum: npt.NDArray[np.float64]
    difficulty_sq_sum: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.key_ids.size)


def summarise_shares(
    key_ids: npt.ArrayLike, ts: npt.ArrayLike, difficulty: npt.ArrayLike, bucket_s: float
) -> ShareTotals:
    """Group shares by (key, bucket of ``bucket_s`` seconds) and sum count, Σd and Σd²."""
    keys = np.asarray(key_ids, dtype=np.int64)
    times = np.asarray(ts, dtype=np.float64)
    diffs = np.asarray(difficulty, dtype=np.float64)
    if not keys.size:
        empty_f = np.empty(0, dtype=np.float64)
        empty_i = np.empty(0, dtype=np.int64)
        return ShareTotals(empty_i, empty_f, empty_f, empty_i, empty_f, empty_f)
    buckets = np.floor(times / bucket_s).astype(np.int64)
    # Bucket-major order: the batches leave in event-time order, so a backlog replayed in one
    # flush does not push the windows' watermark past buckets still to come.
    order = np.lexsort((keys, buckets))
    keys, buckets, times, diffs = keys[order], buckets[order], times[order], diffs[order]
    boundary = np.empty(keys.size, dtype=bool)
    boundary[0] = True
    boundary[1:] = (buckets[1:] != buckets[:-1]) | (keys[1:] != keys[:-1])
    starts = np.flatnonzero(boundary)
    counts = np.diff(np.append(starts, keys.size))
    return ShareTotals(
        key_ids=keys[starts],
        start=np.minimum.reduceat(times, starts),
        end=np.maximum.reduceat(times, starts),
        count=counts.astype(np.int64),
        difficulty_sum=np.add.reduceat(diffs, starts),
        difficulty_sq_sum=np.add.reduceat(diffs * diffs, starts),
    )


#: Where shares of pools beyond the key table's cap are summed (the workers' overflow pool).
OVERFLOW_POOL = "other"


class KeyTable:
    """Dense ids for (pool, region) keys, so shares can be summed by array index.

    At most ``capacity`` keys: once full, a new pool's shares go to (``other``, region), whose
    keys stay few (one per region), so a flood of invented labels cannot exhaust memory and no
    share is lost. The owner empties the table when nothing pending refers to its ids any more.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[tuple[str, str], int] = {}
        self._overflow_ids: dict[str, int] = {}  # by region; apart from a real pool "other"
        self._keys: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def full(self) -> bool:
        return len(self._ids) >= self.capacity

    def id_of(self, pool: str, region: str) -> int:
        """The key's id, made if new; the region's overflow key's once the table is full."""
        key_id = self._ids.get((pool, region))
        if key_id is not None:
            return key_id
        if self.full:
            key_id = self._overflow_ids.get(region)
            if key_id is None:
                key_id = self._overflow_ids[region] = self._append((OVERFLOW_POOL, region))
            return key_id
        key_id = self._ids[(pool, region)] = self._append((pool, region))
        return key_id

    def _append(self, key: tuple[str, str]) -> int:
        self._keys.append(key)
        return len(self._keys) - 1

    def key(self, key_id: int) -> tuple[str, str]:
        return self._keys[key_id]

    def overflow_count(self, totals: ShareTotals) -> int:
        """Shares of ``totals`` summed under an overflow key because the table was full."""
        if not self._overflow_ids or not len(totals):
            return 0
        overflow = np.fromiter(self._overflow_ids.values(), dtype=np.int64)
        return int(totals.count[np.isin(totals.key_ids, overflow)].sum())
