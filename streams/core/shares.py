"""Sampled hashrate per (pool, region) from accepted shares, over sliding windows (METHOD.md §1).

A share accepted at assigned difficulty d stands for d·2³² expected hashes, and shares arrive as a
compound Poisson process, so over a window of T_eff seconds Ĥ = Σd·2³²/T_eff is unbiased with
Var = Σd²·2⁶⁴/T_eff². State is kept per (pool, region, time bucket), never per share:

* Two resolutions: 10 s buckets kept 3900 s (windows up to an hour), 300 s buckets kept 87 000 s
  (windows up to a day), so a 24 h window reads 288 buckets instead of 8 640. Each resolution is
  a ring of numpy arrays, one row per key: slot = bucket index mod slots, and the slot remembers
  which bucket it holds, so a newer bucket simply overwrites an expired one. Memory per key is
  fixed (390 + 290 slots, ≈ 22 kB with the defaults) whatever the share rate; keys with nothing
  retained are dropped by `expire`, which also runs by itself once per coarse bucket of event
  time.
* Lateness is judged per pool: a share older than its pool's latest event minus the allowed
  lateness is counted as late and dropped. Each pool's feed is its own ordered stream, and a
  partition mixes several pools that a backlog can deliver at different speeds, so one pool
  running ahead must not make another's shares late. Whatever the pool, an event older than the
  fine buckets can hold (the latest event of all minus the fine retention and two buckets) is
  late too. The `watermark` (latest event of all − allowed lateness) is where the windows of
  every pool are final.
* Duplicates: share ids are remembered with the fine bucket of their share; a bucket's ids are
  forgotten once the whole bucket lies behind the watermark (a redelivery would then be late
  anyway), so about (lateness + 2 buckets) × id'd share rate are held; when more than
  `dedup_capacity` ids are held the oldest buckets' ids are forgotten early, and only then can a
  duplicate be credited twice. A share is judged late before it is judged a duplicate.

Window edges: each pool's window is [now − T, e], where e is the end of what its feed has
delivered. A batch states what it covers, so for a pool whose latest event is a batch
e = min(now, max(end of that batch, watermark)): a pool whose feed lags (its last batch ended
before `now`) is not divided by time it has not reported yet, and a pool silent for longer than
the allowed lateness has its silence counted (nothing late can fill it any more). A single share
states nothing of the time after it; its pool is taken as observed up to the latest event of all
(or `now` if later), so e = now. Every bucket counts the part of its *occupied span* that lies in
the window, pro rata: the span starts no earlier than the pool's first event and ends no later
than what the feed has delivered. With a constant rate over a bucket this is the expected content
of that part, so the estimate stays unbiased at both edges: the bucket straddling the window
start, and the bucket holding `now` (which may hold events up to the latest one seen, after
`now`). Buckets wholly inside count whole. Caveat: a compacted batch ends at its last share, so
the window of a sparse pool fed through the compactor ends at a share, which biases it up by
about one share, as a first share would.

Effective time: T_eff = e − max(now − T, first event of the *pool*) (= min(T, now − first event)
when the feed is current). A pool that just started is then
not under-estimated, and a region that appears inside an old pool is not over-estimated (its
earlier absence is real information). One refinement over the bare formula: when the window
reaches back to the pool's first event and that event was a single share, that share is not
credited. The time before it was not observed, so it marks the start rather than being a sample
of the rate: with it, the estimate after a start is biased up by one share (+50 % at two shares
per window); without it, the count over (first share, now] is an exact Poisson sample. A batch
as first event starts the clock at its `start`, which is a proxy's aggregation boundary and not a
share, so nothing is removed there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from streams.core.intervals import compound_poisson_interval
from streams.core.units import HASHES_PER_DIFFICULTY

STATE_VERSION = 1

Key = tuple[str, str]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_EMPTY = np.iinfo(np.int64).min
_COLUMNS = 3  # count, Σd, Σd²


class ShareOutcome(Enum):
    """What became of one share or batch."""

    CREDITED = "credited"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass(frozen=True)
class WindowEstimate:
    """Sampled hashrate of one (pool, region) over a window.

    `share_count`, `difficulty_sum` and `difficulty_sq_sum` are what the window holds, with the
    straddled start bucket and spread batches pro rata (so the count can be fractional);
    `effective_seconds` is T_eff; `share_scale` is the key's Σd²/Σd over all it retains (the
    scale the interval used, 0 if unknown). With them keys or partitions can be recombined and
    their interval recomputed by `intervals.compound_poisson_interval(..., share_scale=...)`.
    """

    hashrate_hs: float
    ci95_hs: tuple[float, float]
    se_hs: float
    share_count: float
    difficulty_sum: float
    difficulty_sq_sum: float
    effective_seconds: float
    share_scale: float


@dataclass(frozen=True)
class WindowTotals:
    """A key's window content before the interval is computed (see `WindowEstimate`)."""

    share_count: float
    difficulty_sum: float
    difficulty_sq_sum: float
    effective_seconds: float
    share_scale: float


#: (pool, region, count, Σd, Σd², T_eff, share scale): `WindowTotals` of a key, as a row.
TotalsRow = tuple[str, str, float, float, float, float, float]


@dataclass(frozen=True)
class _RowFacts:
    """What every window reads per row: its pool's first event time, the difficulty of that
    event if it was a single share in the row's region (else 0), and the row's share scale."""

    origin_ts: FloatArray
    origin_share: FloatArray
    share_scale: FloatArray
    #: Up to when the pool's feed has delivered: its last batch's end, or for a pool whose
    #: latest event is a single share +inf (observed up to the latest event of all).
    last_ts: FloatArray


@dataclass
class ShareCounters:
    """Totals of shares by outcome (a batch adds its count)."""

    credited: int = 0
    rejected: int = 0
    duplicate: int = 0
    late: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class _PoolClock:
    """A pool's first event (the origin of T_eff) and its latest event time.

    `origin_difficulty` is the difficulty of the first event if it was a single share (left out of
    windows that reach back to it), 0 for a batch. Among events at the same time the one with the
    larger difficulty, then the smaller region code, comes first, so that the choice does not
    depend on arrival order (which keeps merges and reordered streams exact).
    """

    origin_ts: float
    origin_difficulty: float
    origin_region: str
    last_ts: float
    #: The latest event was a batch: its end bounds what the feed has delivered. A single share
    #: is a point of a stream observed up to the latest event of all.
    last_batch: bool = False

    def take(self, origin_ts: float, difficulty: float, region: str, last_ts: float,
             last_batch: bool = False) -> None:
        """Fold in an event (or another clock): earliest origin wins, latest time is kept."""
        if origin_ts <= self.origin_ts and (origin_ts, -difficulty, region) < (
            self.origin_ts,
            -self.origin_difficulty,
            self.origin_region,
        ):
            self.origin_ts, self.origin_difficulty, self.origin_region = (
                origin_ts,
                difficulty,
                region,
            )
        if last_ts > self.last_ts:
            self.last_ts, self.last_batch = last_ts, last_batch
        elif last_ts == self.last_ts:
            self.last_batch = self.last_batch and last_batch


#: Batches over at most this many buckets are spread without numpy (`_add_short_span`).
_SHORT_SPAN_BUCKETS = 16


class _BucketRing:
    """Buckets of one resolution for all keys: index[row, slot] says which bucket a slot holds.

    Single cells are read and written through flat memoryviews of the arrays: a numpy scalar
    access costs several times more, and `add_one` runs twice per batch a worker applies.
    """

    def __init__(self, bucket_s: float, retention_s: float) -> None:
        self.bucket_s = bucket_s
        self.slots = math.ceil(retention_s / bucket_s)
        self._use(np.full((0, self.slots), _EMPTY, dtype=np.int64),
                  np.zeros((0, self.slots, _COLUMNS), dtype=np.float64))

    def _use(self, index: IntArray, data: FloatArray) -> None:
        self.index, self.data = index, data
        # Flat views of the same memory (the arrays are contiguous: reshape makes no copy).
        self._index_cells = index.reshape(-1).data
        self._data_cells = cast("memoryview[float]", data.reshape(-1).data)

    def ensure_rows(self, rows: int) -> None:
        capacity = self.index.shape[0]
        if rows <= capacity:
            return
        new_capacity = max(rows, 2 * capacity, 8)
        index = np.full((new_capacity, self.slots), _EMPTY, dtype=np.int64)
        data = np.zeros((new_capacity, self.slots, _COLUMNS), dtype=np.float64)
        index[:capacity] = self.index
        data[:capacity] = self.data
        self._use(index, data)

    def bucket_of(self, ts: float) -> int:
        return math.floor(ts / self.bucket_s)

    def add_one(self, row: int, bucket: int, count: float, dsum: float, dsq: float) -> None:
        cell = row * self.slots + bucket % self.slots
        stored = self._index_cells[cell]
        if bucket >= stored:
            values = self._data_cells
            first = cell * _COLUMNS
            if bucket > stored:
                self._index_cells[cell] = bucket
                values[first], values[first + 1], values[first + 2] = count, dsum, dsq
            else:
                values[first] += count
                values[first + 1] += dsum
                values[first + 2] += dsq
        # bucket < stored: older than the retention behind a newer bucket; nothing to keep.

    def add_span(self, row: int, start: float, end: float, count: float, dsum: float,
                 dsq: float) -> None:
        """Spread totals over the buckets [start, end] overlaps, in proportion to the overlap."""
        first = math.floor(start / self.bucket_s)
        last = math.floor(end / self.bucket_s)
        if first == last:  # the usual batch: one bucket, no numpy
            self.add_one(row, first, count, dsum, dsq)
            return
        if last == first + 1 and end > start:
            # A batch across one bucket edge (a proxy's batches need not align with the
            # buckets): `_overlaps` arithmetic without numpy, the same floats.
            edge = last * self.bucket_s
            low = (min(edge, end) - max(first * self.bucket_s, start)) / (end - start)
            high = (end - max(edge, start)) / (end - start)
            if low > 0.0 and high > 0.0:
                self.add_one(row, first, low * count, low * dsum, low * dsq)
                self.add_one(row, last, high * count, high * dsum, high * dsq)
            else:
                self.add_one(row, first if low > 0.0 else last, count, dsum, dsq)
            return
        if last - first < _SHORT_SPAN_BUCKETS and end > start:
            self._add_short_span(row, first, last, start, end, (count, dsum, dsq))
            return
        buckets, fractions = _overlaps(start, end, self.bucket_s)
        self.add_many(row, buckets, fractions[:, None] * np.array([[count, dsum, dsq]]))

    def _add_short_span(self, row: int, first: int, last: int, start: float, end: float,
                        totals: tuple[float, float, float]) -> None:
        """`_overlaps` then `add_many` in plain floats (the same arithmetic, the same floats):
        a batch over a few buckets costs a fifth of the numpy path."""
        parts = []
        for bucket in range(first, last + 1):
            fraction = (min((bucket + 1) * self.bucket_s, end)
                        - max(bucket * self.bucket_s, start)) / (end - start)
            if fraction > 0.0:
                parts.append((bucket, fraction))
        if len(parts) == 1:
            parts = [(parts[0][0], 1.0)]
        count, dsum, dsq = totals
        for bucket, fraction in parts:
            self.add_one(row, bucket, fraction * count, fraction * dsum, fraction * dsq)

    def add_many(self, row: int, buckets: IntArray, values: FloatArray) -> None:
        """Add rows of `values` (count, Σd, Σd²) to `buckets`, as if one by one in array order."""
        if buckets.size == 0:
            return
        slots = buckets % self.slots
        stored = self.index[row]
        newest = stored.copy()
        np.maximum.at(newest, slots, buckets)
        renewed = newest > stored
        self.data[row, renewed] = 0.0
        self.index[row] = newest
        keep = buckets == newest[slots]
        np.add.at(self.data[row], slots[keep], values[keep])

    def merge_row(self, row: int, index: IntArray, data: FloatArray) -> None:
        """Combine another ring's row into `row`: the newer bucket wins a slot, equal ones add."""
        mine = self.index[row]
        newer = index > mine
        same = (index == mine) & (index != _EMPTY)
        self.data[row, newer] = data[newer]
        self.index[row, newer] = index[newer]
        self.data[row, same] += data[same]

    def move_row(self, source: int, target: int) -> None:
        self.index[target] = self.index[source]
        self.data[target] = self.data[source]

    def clear_row(self, row: int) -> None:
        self.index[row] = _EMPTY
        self.data[row] = 0.0

    def forget_before(self, rows: int, bucket: int) -> None:
        """Empty the slots of buckets older than `bucket` (beyond retention)."""
        index = self.index[:rows]
        stale = np.nonzero((index < bucket) & (index != _EMPTY))
        index[stale] = _EMPTY
        self.data[:rows][stale] = 0.0

    def row_state(self, row: int) -> list[list[float]]:
        rows: list[list[float]] = self.row_array(row).tolist()
        return rows

    def row_array(self, row: int) -> FloatArray:
        """The row's held buckets oldest first, one [bucket, count, Σd, Σd²] line each."""
        held = np.nonzero(self.index[row] != _EMPTY)[0]
        order = held[np.argsort(self.index[row, held])]
        return np.column_stack((self.index[row, order].astype(np.float64), self.data[row, order]))

    def load_row(self, row: int, cells: Iterable[Iterable[float]]) -> None:
        for cell in cells:
            bucket, count, dsum, dsq = (float(v) for v in cell)
            if bucket != math.floor(bucket):
                raise ValueError(f"bucket index must be an integer, got {bucket}")
            self.add_one(row, int(bucket), count, dsum, dsq)


class ShareWindows:
    """Mergeable, checkpointable per-(pool, region) share buckets with windowed estimates."""

    def __init__(
        self,
        *,
        fine_bucket_s: float = 10.0,
        fine_retention_s: float = 3900.0,
        coarse_bucket_s: float = 300.0,
        coarse_retention_s: float = 87000.0,
        allowed_lateness_s: float = 60.0,
        dedup_capacity: int = 100_000,
    ) -> None:
        for name, value in (
            ("fine_bucket_s", fine_bucket_s),
            ("fine_retention_s", fine_retention_s),
            ("coarse_bucket_s", coarse_bucket_s),
            ("coarse_retention_s", coarse_retention_s),
        ):
            if not (value > 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite, got {value}")
        if not (allowed_lateness_s >= 0.0 and math.isfinite(allowed_lateness_s)):
            raise ValueError(f"allowed_lateness_s must be ≥ 0, got {allowed_lateness_s}")
        # An in-time event must never meet a newer bucket in its ring slot.
        for bucket, retention in (
            (fine_bucket_s, fine_retention_s),
            (coarse_bucket_s, coarse_retention_s),
        ):
            if allowed_lateness_s + bucket >= retention:
                raise ValueError("retention must exceed allowed lateness plus one bucket")
        if coarse_retention_s < fine_retention_s:
            raise ValueError("coarse retention must be at least the fine retention")
        if dedup_capacity < 0:
            raise ValueError(f"dedup_capacity must be ≥ 0, got {dedup_capacity}")
        self.fine_bucket_s = float(fine_bucket_s)
        self.fine_retention_s = float(fine_retention_s)
        self.coarse_bucket_s = float(coarse_bucket_s)
        self.coarse_retention_s = float(coarse_retention_s)
        self.allowed_lateness_s = float(allowed_lateness_s)
        self.dedup_capacity = int(dedup_capacity)
        # How far behind the latest event an event can still land in the fine buckets, and
        # the longest batch that can then be placed.
        self._placeable_s = self.fine_retention_s - 2.0 * self.fine_bucket_s
        self._longest_batch_s = (
            self.fine_retention_s - self.allowed_lateness_s - 2.0 * self.fine_bucket_s
        )
        self._fine = _BucketRing(self.fine_bucket_s, self.fine_retention_s)
        self._coarse = _BucketRing(self.coarse_bucket_s, self.coarse_retention_s)
        self._rows: dict[Key, int] = {}
        self._row_keys: list[Key] = []
        self._pools: dict[str, _PoolClock] = {}
        self._latest_ts = -math.inf
        self._next_expiry = -math.inf
        self._counters = ShareCounters()
        self._seen_ids: dict[str, int] = {}
        self._ids_by_bucket: dict[int, list[str]] = {}

    # ---- inspection ----------------------------------------------------------------------

    @property
    def watermark(self) -> float:
        """Latest event time seen minus the allowed lateness (−inf before any event)."""
        return self._latest_ts - self.allowed_lateness_s

    @property
    def counters(self) -> ShareCounters:
        """A copy of the totals by outcome."""
        return ShareCounters(**self._counters.as_dict())

    def keys(self) -> list[Key]:
        """The (pool, region) keys that hold retained buckets."""
        return list(self._row_keys)

    def holds(self, pool: str, region: str) -> bool:
        """Whether (pool, region) has a row (cheap: for label caps on the hot path)."""
        return (pool, region) in self._rows

    @property
    def key_count(self) -> int:
        return len(self._row_keys)

    @property
    def pool_count(self) -> int:
        return len(self._pools)

    def knows_pool(self, pool: str) -> bool:
        return pool in self._pools

    def stored_buckets(self) -> int:
        """Number of non-empty bucket slots over both resolutions (a memory measure)."""
        rows = len(self._row_keys)
        return int(
            np.count_nonzero(self._fine.index[:rows] != _EMPTY)
            + np.count_nonzero(self._coarse.index[:rows] != _EMPTY)
        )

    def dedup_size(self) -> int:
        """Number of share ids currently remembered for duplicate detection."""
        return len(self._seen_ids)

    # ---- ingestion -----------------------------------------------------------------------

    def add_share(
        self,
        pool: str,
        region: str,
        ts: float,
        difficulty: float,
        accepted: bool = True,
        share_id: str | None = None,
    ) -> ShareOutcome:
        """Take one share. Rejected: counted, never credited. Late (ts < watermark): counted and
        dropped. A repeated `share_id`: counted as duplicate, credited once."""
        if not math.isfinite(ts):
            raise ValueError(f"ts must be finite, got {ts}")
        if not accepted:
            self._counters.rejected += 1
            return ShareOutcome.REJECTED
        if not (difficulty > 0.0 and math.isfinite(difficulty)):
            raise ValueError(f"difficulty must be positive and finite, got {difficulty}")
        if ts < self._late_before(pool):
            self._counters.late += 1
            return ShareOutcome.LATE
        if share_id is not None:
            if share_id in self._seen_ids:
                self._counters.duplicate += 1
                return ShareOutcome.DUPLICATE
            bucket = self._fine.bucket_of(ts)
            self._seen_ids[share_id] = bucket
            self._ids_by_bucket.setdefault(bucket, []).append(share_id)
            if len(self._seen_ids) > self.dedup_capacity:
                self._forget_ids()
        row = self._row(pool, region)
        dsq = difficulty * difficulty
        self._fine.add_one(row, self._fine.bucket_of(ts), 1.0, difficulty, dsq)
        self._coarse.add_one(row, self._coarse.bucket_of(ts), 1.0, difficulty, dsq)
        self._note_pool_event(pool, region, ts, difficulty, ts)
        self._counters.credited += 1
        self._advance(ts)
        return ShareOutcome.CREDITED

    def add_shares(
        self, pool: str, region: str, ts: npt.ArrayLike, difficulty: npt.ArrayLike
    ) -> int:
        """Take accepted shares without ids, vectorised; returns how many were credited.

        Same result as `add_share` called on each in array order: a share is late when it is
        older than the late bound left by the shares before it.
        """
        times = np.asarray(ts, dtype=np.float64).ravel()
        diffs = np.asarray(difficulty, dtype=np.float64).ravel()
        if times.shape != diffs.shape:
            raise ValueError("ts and difficulty must have the same length")
        if times.size == 0:
            return 0
        if not np.all(np.isfinite(times)):
            raise ValueError("ts must be finite")
        if not (np.all(diffs > 0.0) and np.all(np.isfinite(diffs))):
            raise ValueError("difficulty must be positive and finite")
        clock = self._pools.get(pool)
        pool_last = -math.inf if clock is None else clock.last_ts
        pool_before = np.maximum.accumulate(np.concatenate(([pool_last], times[:-1])))
        all_before = np.maximum.accumulate(np.concatenate(([self._latest_ts], times[:-1])))
        in_time = (times >= pool_before - self.allowed_lateness_s) & (
            times >= all_before - self._placeable_s
        )
        credited = int(np.count_nonzero(in_time))
        self._counters.late += times.size - credited
        if credited == 0:
            return 0
        times, diffs = times[in_time], diffs[in_time]
        row = self._row(pool, region)
        values = np.column_stack((np.ones_like(diffs), diffs, diffs * diffs))
        for ring in (self._fine, self._coarse):
            buckets = np.floor(times / ring.bucket_s).astype(np.int64)
            ring.add_many(row, buckets, values)
        self._note_pool_events(pool, region, times, diffs)
        self._counters.credited += credited
        self._advance(float(times.max()))
        return credited

    def add_batch(
        self,
        pool: str,
        region: str,
        start: float,
        end: float,
        count: float,
        difficulty_sum: float,
        difficulty_sq_sum: float,
    ) -> ShareOutcome:
        """Take shares a proxy already summed over [start, end]; late when `end` is older than the
        pool's late bound, or `start` older than the fine buckets can hold.

        The batch is spread over the buckets it overlaps in proportion to the time overlap —
        the assumption being a constant share rate within the batch, which is what a Poisson
        stream gives in expectation. A batch inside one bucket lands whole in it, so it gives
        exactly the estimate of the shares it summarises; a zero-length batch goes to the
        bucket of its time. Batches longer than the fine retention minus the lateness and two
        fine buckets (3820 s by default) cannot be placed and are refused.
        """
        count, dsum, dsq = float(count), float(difficulty_sum), float(difficulty_sq_sum)
        inf = math.inf
        if not (
            -inf < start <= end < inf and end - start <= self._longest_batch_s
            and 0.0 <= count < inf and 0.0 <= dsum < inf and 0.0 <= dsq < inf
        ):
            raise ValueError(self._batch_fault(start, end, (count, dsum, dsq)))
        if end < self._late_before(pool) or start < self._latest_ts - self._placeable_s:
            self._counters.late += round(count)
            return ShareOutcome.LATE
        row = self._row(pool, region)
        self._fine.add_span(row, start, end, count, dsum, dsq)
        self._coarse.add_span(row, start, end, count, dsum, dsq)
        self._note_pool_event(pool, region, start, 0.0, end)
        self._counters.credited += round(count)
        self._advance(end)
        return ShareOutcome.CREDITED

    # ---- estimates -----------------------------------------------------------------------

    def estimates(self, now: float, window_s: float) -> dict[Key, WindowEstimate]:
        """Ĥ, its 95 % interval and SE per key over [now − window_s, now].

        Uses the fine buckets when the window fits in them, else the coarse ones. Keys whose pool
        has no observed time before `now` (T_eff ≤ 0) are left out. The interval is the
        compound-Poisson one with the share scale s = Σd²/Σd taken over everything the key
        retains (up to a day) rather than over the window alone: a window of a few shares says
        little about a wide vardiff mix, the day's shares do (the mix of difficulties moves far
        slower than the hashrate). A key with no share in the window gets 0 with an upper bound
        of 3.689·s per T_eff (unbounded if the key never had a share). `se_hs` is the plain
        2³²·√Σd²/T_eff.
        """
        result: dict[Key, WindowEstimate] = {}
        for key, totals in self.window_totals(now, window_s).items():
            scale = HASHES_PER_DIFFICULTY / totals.effective_seconds
            dsum, dsq = totals.difficulty_sum, totals.difficulty_sq_sum
            lower, upper = compound_poisson_interval(dsum, dsq, 0.95, totals.share_scale)
            result[key] = WindowEstimate(
                hashrate_hs=dsum * scale,
                ci95_hs=(lower * scale, upper * scale),
                se_hs=math.sqrt(dsq) * scale,
                share_count=totals.share_count,
                difficulty_sum=dsum,
                difficulty_sq_sum=dsq,
                effective_seconds=totals.effective_seconds,
                share_scale=totals.share_scale,
            )
        return result

    def window_totals(self, now: float, window_s: float) -> dict[Key, WindowTotals]:
        """What `estimates` is computed from, without the intervals: mergeable totals per key,
        cheap enough to publish every second (the intervals cost far more than the sums)."""
        ring = self._ring_for(now, window_s)
        if not self._row_keys:
            return {}
        facts = self._row_facts()
        count, dsum, dsq, t_eff = self._window_sums(ring, now, window_s, facts)
        rows = zip(self._row_keys, count.tolist(), dsum.tolist(), dsq.tolist(), t_eff.tolist(),
                   facts.share_scale.tolist(), strict=True)
        return {key: WindowTotals(c, s, q, t, scale) for key, c, s, q, t, scale in rows if t > 0.0}

    def window_rows(self, now: float, windows_s: Iterable[float]) -> dict[float, list[TotalsRow]]:
        """`window_totals` of several windows as (pool, region, count, Σd, Σd², T_eff, share
        scale) rows, only of keys with shares in the window: what a partition publishes every
        second, so what every window needs is computed once."""
        rings = {window_s: self._ring_for(now, window_s) for window_s in windows_s}
        if not self._row_keys:
            return {window_s: [] for window_s in rings}
        facts = self._row_facts()
        scales = facts.share_scale.tolist()
        keys = self._row_keys
        out = {}
        for window_s, ring in rings.items():
            count, dsum, dsq, t_eff = self._window_sums(ring, now, window_s, facts)
            held = np.flatnonzero((t_eff > 0.0) & ((count > 0.0) | (dsum > 0.0))).tolist()
            c, s, q, t = count.tolist(), dsum.tolist(), dsq.tolist(), t_eff.tolist()
            out[window_s] = [(*keys[i], c[i], s[i], q[i], t[i], scales[i]) for i in held]
        return out

    def _ring_for(self, now: float, window_s: float) -> _BucketRing:
        """The finer ring that holds the whole window."""
        if not (window_s > 0.0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be positive and finite, got {window_s}")
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        start = now - window_s
        for ring in (self._fine, self._coarse):
            if ring.bucket_of(now) - ring.bucket_of(start) + 1 <= ring.slots:
                return ring
        raise ValueError(f"window_s {window_s} exceeds the coarse retention")

    def _row_facts(self) -> _RowFacts:
        rows = len(self._row_keys)
        clocks = [(self._pools[pool], region) for pool, region in self._row_keys]
        history = self._coarse.data[:rows].sum(axis=1)
        known = history[:, 1] > 0.0
        return _RowFacts(
            origin_ts=np.array([clock.origin_ts for clock, _ in clocks], dtype=np.float64),
            origin_share=np.array(
                [clock.origin_difficulty if clock.origin_region == region else 0.0
                 for clock, region in clocks], dtype=np.float64),
            share_scale=np.where(known, history[:, 2] / np.where(known, history[:, 1], 1.0),
                                 0.0),
            last_ts=np.array([clock.last_ts if clock.last_batch else math.inf
                              for clock, _ in clocks], dtype=np.float64),
        )

    def _window_sums(
        self, ring: _BucketRing, now: float, window_s: float, facts: _RowFacts
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Count, Σd, Σd² and T_eff of every row over [now − window_s, now] (module docstring:
        window edges, effective time), reading only the ring slots the window covers."""
        start = now - window_s
        first_bucket = ring.bucket_of(start)
        buckets = np.arange(first_bucket, ring.bucket_of(now) + 1, dtype=np.int64)
        slots = buckets % ring.slots
        rows = len(self._row_keys)
        weights = (ring.index[:rows][:, slots] == buckets).astype(np.float64)
        # Each row's window ends where its pool's feed has delivered (module docstring).
        end = np.minimum(now, np.maximum(facts.last_ts, self.watermark))
        # Single-share pools are observed up to the latest event of all (or `now` if later).
        delivered = np.minimum(facts.last_ts, max(self._latest_ts, now))
        # Every bucket: the part of its occupied span that lies in [start, end].
        lows = buckets * ring.bucket_s
        span_start = np.maximum(lows[None, :], facts.origin_ts[:, None])
        span_end = np.minimum(lows[None, :] + ring.bucket_s, delivered[:, None])
        occupied = span_end - span_start
        inside = (np.minimum(span_end, end[:, None]) - np.maximum(span_start, start))
        weights *= np.where(
            occupied > 0.0,
            np.clip(inside / np.where(occupied > 0.0, occupied, 1.0), 0.0, 1.0),
            1.0,
        )
        sums = np.einsum("kn,knc->kc", weights, ring.data[:rows][:, slots])
        count, dsum, dsq = sums[:, 0], sums[:, 1], sums[:, 2]
        # A first share inside the window marks the start of observation: not a sample.
        origin = facts.origin_share
        marker = (origin > 0.0) & (start <= facts.origin_ts) & (facts.origin_ts <= end)
        if marker.any():
            count = np.where(marker, np.maximum(count - 1.0, 0.0), count)
            dsum = np.where(marker, np.maximum(dsum - origin, 0.0), dsum)
            dsq = np.where(marker, np.maximum(dsq - origin * origin, 0.0), dsq)
            emptied = marker & (dsum == 0.0)
            count = np.where(emptied, 0.0, count)
            dsq = np.where(emptied, 0.0, dsq)
        return count, dsum, dsq, np.maximum(end - np.maximum(start, facts.origin_ts), 0.0)

    # ---- bookkeeping ---------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Drop what lies beyond retention at `now`: old buckets, keys and pools left empty, and
        remembered ids behind the watermark."""
        rows = len(self._row_keys)
        self._fine.forget_before(rows, self._fine.bucket_of(now - self.fine_retention_s) + 1)
        self._coarse.forget_before(
            rows, self._coarse.bucket_of(now - self.coarse_retention_s) + 1
        )
        held = np.any(self._coarse.index[:rows] != _EMPTY, axis=1) | np.any(
            self._fine.index[:rows] != _EMPTY, axis=1
        )
        for row in np.nonzero(~held)[0][::-1]:  # from the end: removal moves the last row
            self._remove_row(self._row_keys[int(row)])
        horizon = now - self.coarse_retention_s
        for pool in [p for p, clock in self._pools.items() if clock.last_ts < horizon]:
            del self._pools[pool]
        self._forget_ids()

    def merge(self, other: ShareWindows) -> None:
        """Add another instance's state (e.g. another partition's) into this one.

        Buckets of the same key and time add, the newer bucket wins a ring slot, pool origins take
        the earliest event, counters add, the watermark is the later one and remembered ids are
        united. However the events were split (by pool, as Kafka keys them, or even one key over
        several partitions), the merged windows equal those of one instance fed every event, as
        long as the one instance would not have dropped as late an event that a partition, with
        its own lower watermark, accepted.
        """
        if self._settings() != other._settings():
            raise ValueError("cannot merge ShareWindows with different settings")
        for key, other_row in other._rows.items():
            row = self._row(*key)
            self._fine.merge_row(row, other._fine.index[other_row], other._fine.data[other_row])
            self._coarse.merge_row(
                row, other._coarse.index[other_row], other._coarse.data[other_row]
            )
        for pool, clock in other._pools.items():
            self._merge_clock(pool, clock)
        for name, value in other._counters.as_dict().items():
            setattr(self._counters, name, getattr(self._counters, name) + value)
        for share_id, bucket in other._seen_ids.items():
            if share_id not in self._seen_ids:
                self._seen_ids[share_id] = bucket
                self._ids_by_bucket.setdefault(bucket, []).append(share_id)
        self._latest_ts = max(self._latest_ts, other._latest_ts)
        self._next_expiry = max(self._next_expiry, other._next_expiry)
        self._forget_ids()

    def to_state(self, *, arrays: bool = False) -> dict[str, Any]:
        """JSON-ready state (lists, floats, strings); `from_state` restores it exactly.

        With `arrays`, each ring row is a numpy array instead (for orjson's
        OPT_SERIALIZE_NUMPY, which writes the same JSON): as lists, a full state costs a Python
        float per cell, about 8 times the rings' own size while a checkpoint is built (#18)."""
        row_state = (lambda ring, row: ring.row_array(row)) if arrays else (
            lambda ring, row: ring.row_state(row))
        return {
            "version": STATE_VERSION,
            "settings": self._settings(),
            "keys": [
                {
                    "pool": pool,
                    "region": region,
                    "fine": row_state(self._fine, row),
                    "coarse": row_state(self._coarse, row),
                }
                for (pool, region), row in self._rows.items()
            ],
            "pools": {
                pool: [c.origin_ts, c.origin_difficulty, c.origin_region, c.last_ts,
                       c.last_batch]
                for pool, c in self._pools.items()
            },
            "latest_ts": None if math.isinf(self._latest_ts) else self._latest_ts,
            "next_expiry": None if math.isinf(self._next_expiry) else self._next_expiry,
            "counters": self._counters.as_dict(),
            "ids": [[bucket, list(ids)] for bucket, ids in sorted(self._ids_by_bucket.items())],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ShareWindows:
        """Rebuild an instance from `to_state()` output."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported ShareWindows state version {state.get('version')!r}")
        windows = cls(**state["settings"])
        for entry in state["keys"]:
            row = windows._row(str(entry["pool"]), str(entry["region"]))
            windows._fine.load_row(row, entry["fine"])
            windows._coarse.load_row(row, entry["coarse"])
        for pool, (origin_ts, origin_difficulty, origin_region, last_ts, *rest) in state[
            "pools"
        ].items():  # states written before `last_batch` have four fields
            windows._pools[str(pool)] = _PoolClock(
                float(origin_ts), float(origin_difficulty), str(origin_region), float(last_ts),
                bool(rest[0]) if rest else False,
            )
        latest, next_expiry = state["latest_ts"], state["next_expiry"]
        windows._latest_ts = -math.inf if latest is None else float(latest)
        windows._next_expiry = -math.inf if next_expiry is None else float(next_expiry)
        windows._counters = ShareCounters(**{k: int(v) for k, v in state["counters"].items()})
        for bucket, ids in state["ids"]:
            windows._ids_by_bucket[int(bucket)] = [str(i) for i in ids]
            for share_id in ids:
                windows._seen_ids[str(share_id)] = int(bucket)
        return windows

    # ---- internals -----------------------------------------------------------------------

    def _settings(self) -> dict[str, float | int]:
        return {
            "fine_bucket_s": self.fine_bucket_s,
            "fine_retention_s": self.fine_retention_s,
            "coarse_bucket_s": self.coarse_bucket_s,
            "coarse_retention_s": self.coarse_retention_s,
            "allowed_lateness_s": self.allowed_lateness_s,
            "dedup_capacity": self.dedup_capacity,
        }

    def _row(self, pool: str, region: str) -> int:
        key = (pool, region)
        row = self._rows.get(key)
        if row is None:
            row = len(self._row_keys)
            self._rows[key] = row
            self._row_keys.append(key)
            self._fine.ensure_rows(row + 1)
            self._coarse.ensure_rows(row + 1)
        return row

    def _remove_row(self, key: Key) -> None:
        """Swap the last row into the removed one so that rows stay dense."""
        row = self._rows.pop(key)
        last = len(self._row_keys) - 1
        if row != last:
            moved = self._row_keys[last]
            for ring in (self._fine, self._coarse):
                ring.move_row(last, row)
            self._rows[moved] = row
            self._row_keys[row] = moved
        for ring in (self._fine, self._coarse):
            ring.clear_row(last)
        self._row_keys.pop()

    def _note_pool_event(
        self, pool: str, region: str, origin_ts: float, difficulty: float, event_ts: float
    ) -> None:
        """Move the pool's origin earlier if this event precedes it; a pool silent for longer
        than the coarse retention starts afresh (its old origin says nothing any more)."""
        clock = self._pools.get(pool)
        if clock is None or origin_ts - clock.last_ts > self.coarse_retention_s:
            self._pools[pool] = _PoolClock(origin_ts, difficulty, region, event_ts,
                                           difficulty == 0.0)
        else:
            clock.take(origin_ts, difficulty, region, event_ts, difficulty == 0.0)

    def _note_pool_events(
        self, pool: str, region: str, times: FloatArray, diffs: FloatArray
    ) -> None:
        """`_note_pool_event` for credited shares in arrival order, vectorised."""
        clock = self._pools.get(pool)
        previous_last = -math.inf if clock is None else clock.last_ts
        latest_before = np.maximum.accumulate(np.concatenate(([previous_last], times[:-1])))
        restarts = np.nonzero(times - latest_before > self.coarse_retention_s)[0]
        first = 0
        if restarts.size:
            first = int(restarts[-1])
            self._pools.pop(pool, None)
        # Earliest time, then larger difficulty (lexsort sorts by its last key first).
        best = first + int(np.lexsort((-diffs[first:], times[first:]))[0])
        self._note_pool_event(
            pool, region, float(times[best]), float(diffs[best]), float(times.max())
        )

    def _merge_clock(self, pool: str, other: _PoolClock) -> None:
        clock = self._pools.get(pool)
        if clock is None:
            self._pools[pool] = _PoolClock(
                other.origin_ts, other.origin_difficulty, other.origin_region, other.last_ts,
                other.last_batch,
            )
        else:
            clock.take(other.origin_ts, other.origin_difficulty, other.origin_region, other.last_ts,
                       other.last_batch)

    def _batch_fault(self, start: float, end: float, values: tuple[float, ...]) -> str:
        """Why `add_batch` refuses a batch, the first rule broken in this order."""
        if not all(math.isfinite(v) for v in (start, end, *values)):
            return "batch fields must be finite"
        if end < start:
            return "batch end must not be before its start"
        if end - start > self._longest_batch_s:
            return f"batch longer than {self._longest_batch_s} s cannot be placed"
        return "batch count and sums must be ≥ 0"

    def _late_before(self, pool: str) -> float:
        """Events of `pool` older than this are late (see the module docstring)."""
        clock = self._pools.get(pool)
        pool_bound = -math.inf if clock is None else clock.last_ts - self.allowed_lateness_s
        return max(pool_bound, self._latest_ts - self._placeable_s)

    def _advance(self, event_ts: float) -> None:
        """Move event time forward; expire by itself once per coarse bucket of event time."""
        if event_ts > self._latest_ts:
            self._latest_ts = event_ts
            self._forget_ids()
        if self._latest_ts >= self._next_expiry:
            self.expire(self._latest_ts)
            self._next_expiry = (
                math.floor(self._latest_ts / self.coarse_bucket_s) + 1
            ) * self.coarse_bucket_s

    def _forget_ids(self) -> None:
        """Forget ids of buckets wholly behind the watermark, and the oldest beyond capacity."""
        if not self._ids_by_bucket:
            return
        behind = math.floor(self.watermark / self.fine_bucket_s)  # buckets < behind are done
        for bucket in sorted(self._ids_by_bucket):
            if bucket >= behind and len(self._seen_ids) <= self.dedup_capacity:
                break
            for share_id in self._ids_by_bucket.pop(bucket):
                if self._seen_ids.get(share_id) == bucket:
                    del self._seen_ids[share_id]


def _overlaps(start: float, end: float, bucket_s: float) -> tuple[IntArray, FloatArray]:
    """Buckets that [start, end] overlaps and the fraction of its length in each."""
    first = math.floor(start / bucket_s)
    if end == start:
        return np.array([first], dtype=np.int64), np.ones(1)
    last = math.floor(end / bucket_s)
    buckets = np.arange(first, last + 1, dtype=np.int64)
    lows = np.maximum(buckets * bucket_s, start)
    highs = np.minimum((buckets + 1) * bucket_s, end)
    fractions = (highs - lows) / (end - start)
    inside = fractions > 0.0
    if np.count_nonzero(inside) == 1:
        fractions = np.where(inside, 1.0, 0.0)
    return buckets[inside], fractions[inside]
