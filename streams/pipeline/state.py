"""What a worker keeps per input partition, and how it is checkpointed.

Exactly-once state from at-least-once delivery: each partition's state carries the offset of the
next message it has not applied. A checkpoint (state + that offset, one changelog message) is
written before the messages it covers are acknowledged to Faust, so the committed offset never
passes the checkpoint. After a crash the replacement restores the checkpoint and skips whatever
Faust redelivers below its offset: nothing is lost and nothing is applied twice.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from streams.contracts import (
    MAX_LABEL_LENGTH,
    MAX_TIMESTAMP,
    InvalidEvent,
    ShareBatchEvent,
    decision_time,
    decode_input,
    latest_event_time,
)
from streams.core.account_concentration import AccountConcentration
from streams.core.blocks import BestChain, BlockFacts, PoolDirectory, describe_block
from streams.core.network import network_hashrate_from_blocks
from streams.core.regions import UNKNOWN_REGION, normalise_region
from streams.core.shares import ShareOutcome, ShareWindows
from streams.metrics import LABEL_OVERFLOW
from streams.models.chain import COVERAGE_BLOCKS, FEE_BLOCKS, RATE_WINDOWS, BlockRate, ChainSummary
from streams.models.partials import ConcentrationRow, PricePartial, SharePartial, WindowRow
from streams.settings import Settings

#: Where shares of pools beyond the cap are credited (nothing is dropped).
OVERFLOW_POOL = "other"
#: Raw region labels remembered as valid per partition (feeds choose them: bounded).
MAX_REMEMBERED_REGIONS = 4096

#: (pool, region, start, end, count, difficulty_sum, difficulty_sq_sum) of a usable batch.
BatchFields = tuple[str, str, float, float, int, float, float]


def plain_batch_fields(
    body: dict[str, Any], region_codes: Mapping[str, str], latest_end: float
) -> BatchFields | None:
    """The fields of ``body`` if it is a plainly valid ``share_batch``, else None.

    Plainly valid is what the compactor writes: JSON floats for the times and sums, an integer
    count, a region label already accepted (``region_codes`` maps it to its code), and every
    rule of ``decode_input`` met (``ShareBatchEvent``: bounds, label rules, consistent sums;
    no time after ``latest_end``, its bound on future times). Anything else may still be valid,
    but only the contract decides that, so that what is refused is refused with its field and
    reason.
    """
    start, end, count = body.get("start"), body.get("end"), body.get("count")
    total, squares = body.get("difficulty_sum"), body.get("difficulty_sq_sum")
    pool, label = body.get("pool"), body.get("region")
    if not (
        body.get("type") == "share_batch"
        and type(start) is float and type(end) is float and type(count) is int
        and type(total) is float and type(squares) is float
        and type(pool) is str and type(label) is str
        and 0.0 < start <= end < MAX_TIMESTAMP and end <= latest_end
        and 0 < len(pool) <= MAX_LABEL_LENGTH and pool.isprintable()
    ):
        return None
    region = region_codes.get(label)
    if count == 0:
        consistent = total == 0.0 and squares == 0.0
    else:  # as the contract: positive difficulties bound the sum of squares, S²/n ≤ Q ≤ S²
        consistent = (
            count > 0 and 0.0 < total < math.inf and squares < math.inf
            and total * total / count * (1 - 1e-9) <= squares <= total * total * (1 + 1e-9)
        )
    if region is None or not consistent:
        return None
    return pool, region, start, end, count, total, squares


def plain_account_sq_sum(body: dict[str, Any], fields: BatchFields) -> tuple[bool, float | None]:
    """(plainly valid, value) of the optional account fields of a plain batch: each absent or
    null, or ``workers`` an int ≥ 0, ``accounts`` an int in [0, count] and
    ``account_difficulty_sq_sum`` a JSON float in [Σd², (Σd)²] (the contract's rules); anything
    else is for the contract to judge. The value is ``account_difficulty_sq_sum``."""
    count, total, squares = fields[4], fields[5], fields[6]
    workers, accounts = body.get("workers"), body.get("accounts")
    value = body.get("account_difficulty_sq_sum")
    plain = (
        (workers is None or (type(workers) is int and workers >= 0))
        and (accounts is None or (type(accounts) is int and 0 <= accounts <= count))
        and (value is None or (type(value) is float
                               and squares * (1 - 1e-9) <= value <= total * total * (1 + 1e-9)))
    )
    return plain, value if plain else None


class Admission(enum.Enum):
    """What to do with the next event of a partition (see ``ResumeCheck``)."""

    APPLY = "apply"
    REREAD = "reread"  # seek back to the partition's next offset; drop this event
    STALE = "stale"  # fetched before that seek: drop it, seek again


@dataclass
class ResumeCheck:
    """Which offsets of one input topic's partitions may be applied next.

    Offsets may skip one (a transaction marker) in a partition whose position is known good:
    read without interruption since its last checkpoint, or since a re-read. Otherwise (after a
    restore) any jump, and anywhere a jump over more than one offset, is believed only once a
    re-read from the state's next offset brings it again (a marker, an aborted transaction,
    records gone with retention). Faust can resume a partition past its last commit after quick
    successive rebalances (seen: one record, or a hundred); the re-read brings them back.
    """

    rereads: dict[int, tuple[int, int]] = field(default_factory=dict)
    settled: set[int] = field(default_factory=set)

    def forget(self, partition: int) -> None:
        """The partition's state was dropped or restored: check its offsets again."""
        self.rereads.pop(partition, None)
        self.settled.discard(partition)

    def checkpointed(self, partition: int) -> None:
        """The partition's state was checkpointed since it was restored."""
        if partition not in self.rereads:
            self.settled.add(partition)

    def admit(self, partition: int, next_offset: int, offset: int) -> Admission:
        pending = self.rereads.get(partition)
        if pending is not None:
            if offset > pending[1]:
                return Admission.STALE
            del self.rereads[partition]  # the first record the re-read brings: the log's truth
            self.settled.add(partition)  # and the position is Kafka's again, not Faust's
            return Admission.APPLY
        if offset == next_offset or (offset == next_offset + 1 and partition in self.settled):
            return Admission.APPLY
        self.rereads[partition] = (next_offset, offset)
        return Admission.REREAD

    def pending(self) -> list[int]:
        """Partitions waiting for the re-read to bring back their next offset."""
        return list(self.rereads)

    def reread_from(self, partition: int) -> int:
        """Where to seek: the last record applied, not the next offset, so that Faust reads a
        record first and sees any offsets jumped over after it (its own bookkeeping counts them
        only then). That record is skipped: it is already applied. (Offsets are committed by
        the worker from its checkpoints, not from this bookkeeping.)"""
        return max(self.rereads[partition][0] - 1, 0)


def encode_checkpoint(body: dict[str, Any]) -> bytes:
    return zlib.compress(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), 3)


def decode_checkpoint(raw: bytes) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(zlib.decompress(raw))
    return body


def new_share_windows(settings: Settings) -> ShareWindows:
    longest = max(settings.windows_s)
    fine_longest = max([w for w in settings.windows_s if w <= 3600.0], default=3600.0)
    return ShareWindows(
        fine_bucket_s=settings.fine_bucket_s,
        fine_retention_s=fine_longest + settings.allowed_lateness_s + 2 * settings.fine_bucket_s,
        coarse_bucket_s=settings.coarse_bucket_s,
        coarse_retention_s=longest + settings.allowed_lateness_s + 2 * settings.coarse_bucket_s,
        allowed_lateness_s=settings.allowed_lateness_s,
        dedup_capacity=0,
    )


@dataclass
class ShareBatchPartition:
    """The share windows fed by one partition of the ``share-batches`` topic."""

    windows: ShareWindows
    next_offset: int = 0
    max_event_ts: float = 0.0
    unacked: list[Any] = field(default_factory=list)
    last_checkpoint: float = 0.0
    max_pools: int = 256
    max_keys: int = 4096
    max_future_skew_s: float = 300.0  # the contract's bound on times ahead of the wall clock
    #: Moves whenever a batch is credited: an unchanged version, next offset and evaluation
    #: time give an unchanged partial.
    version: int = 0
    #: Raw region labels the contract accepted, with their codes (the fast path's to reuse).
    region_codes: dict[str, str] = field(default_factory=dict, repr=False)
    #: Mining-account concentration per (pool, region), from batches that report it.
    concentration: AccountConcentration = field(default_factory=AccountConcentration)

    def labels(self, pool: str, region: str) -> tuple[str, str, str | None]:
        """The labels to credit under, capped so a label flood cannot exhaust memory: a new
        pool beyond ``max_pools`` is credited to ``other``, a new (pool, region) beyond
        ``max_keys`` to the pool's ``ZZ`` if it has one, else to (``other``, ``ZZ``): at most
        ``max_keys`` + 1 series. The third value names the cap that applied."""
        windows = self.windows
        if windows.holds(pool, region):
            return pool, region, None
        overflow = None
        if not windows.knows_pool(pool) and windows.pool_count >= self.max_pools:
            pool, overflow = OVERFLOW_POOL, "pool"
        if not windows.holds(pool, region) and windows.key_count >= self.max_keys:
            region, overflow = UNKNOWN_REGION, "series"
            if not windows.holds(pool, region):
                pool = OVERFLOW_POOL
        return pool, region, overflow

    def apply(self, raw: bytes | None, record_time_s: float | None = None) -> ShareOutcome:
        """Credit one ``share_batch`` message; raise InvalidEvent for anything else. Its times
        are bounded against ``record_time_s`` (the Kafka record's timestamp, see
        ``decision_time``).

        Its cost per message bounds the worker's rate, so a plainly valid batch (see
        `plain_batch_fields`) is read without the contract model, several times cheaper; every
        other message goes through the model, with the same outcome as if all did.
        """
        if raw is None:
            raise InvalidEvent("$", "empty message (no value)")
        now = decision_time(record_time_s, time.time())
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        fields = None
        account_sq: float | None = None
        if type(body) is dict:
            fields = plain_batch_fields(body, self.region_codes,
                                        latest_event_time(now, self.max_future_skew_s))
            if fields is not None:
                plain, account_sq = plain_account_sq_sum(body, fields)
                fields = fields if plain else None
        if fields is None:
            fields, account_sq = self._contract_fields(raw, body, now)
        outcome = self._credit(*fields)
        if outcome is ShareOutcome.CREDITED:
            pool, region, _ = self.labels(fields[0], fields[1])
            self.concentration.add((pool, region), fields[3], fields[5], fields[6], account_sq)
        return outcome

    def _contract_fields(self, raw: bytes, body: Any,
                         now: float) -> tuple[BatchFields, float | None]:
        """The batch as the contract reads it at ``now``, or its InvalidEvent. A region label
        it accepts is remembered: its validity depends on the label alone."""
        event = decode_input(raw, now=now, max_future_skew_s=self.max_future_skew_s)
        if not isinstance(event, ShareBatchEvent):
            raise InvalidEvent("type", f"expected share_batch, got {event.type}")
        try:
            region = normalise_region(event.region)
        except ValueError as exc:  # well-formed but not an ISO 3166 code
            raise InvalidEvent("region", str(exc)) from None
        label = body["region"]  # decoded, so body is the event's JSON object
        if type(label) is str and len(self.region_codes) < MAX_REMEMBERED_REGIONS:
            self.region_codes[label] = region
        return (event.pool, region, event.start, event.end, event.count, event.difficulty_sum,
                event.difficulty_sq_sum), event.account_difficulty_sq_sum

    def _credit(self, pool: str, region: str, start: float, end: float, count: int,
                difficulty_sum: float, difficulty_sq_sum: float) -> ShareOutcome:
        pool, region, overflow = self.labels(pool, region)
        if overflow is not None:
            LABEL_OVERFLOW.labels(overflow).inc()
        try:
            outcome = self.windows.add_batch(pool, region, start, end, count, difficulty_sum,
                                             difficulty_sq_sum)
        except ValueError as exc:  # e.g. a batch longer than the windows can place
            raise InvalidEvent("end", str(exc)) from None
        if outcome is ShareOutcome.CREDITED:
            self.version += 1
            if end > self.max_event_ts:
                self.max_event_ts = end
        return outcome

    def checkpoint(self) -> bytes:
        return encode_checkpoint({
            "next_offset": self.next_offset,
            "max_event_ts": self.max_event_ts,
            "windows": self.windows.to_state(arrays=True),
            "concentration": self.concentration.to_state(),
        })

    @classmethod
    def restore(cls, raw: bytes | None, settings: Settings) -> ShareBatchPartition:
        if raw is None:
            windows, next_offset, max_event_ts = new_share_windows(settings), 0, 0.0
        else:
            body = decode_checkpoint(raw)
            windows = ShareWindows.from_state(body["windows"])
            next_offset, max_event_ts = int(body["next_offset"]), float(body["max_event_ts"])
        concentration = AccountConcentration.from_state(
            None if raw is None else body.get("concentration"))
        return cls(windows=windows, next_offset=next_offset, max_event_ts=max_event_ts,
                   max_pools=settings.max_pools, max_keys=settings.max_series,
                   max_future_skew_s=settings.max_future_skew_s, concentration=concentration)

    def partial(self, t_eval: float, windows_s: list[float], *,
                concentration: bool = True) -> SharePartial:
        """Window totals at ``t_eval`` per (pool, region), for the snapshot leader to merge;
        ``concentration=False`` leaves out the account concentration (read only by the
        network-share intervals: the offline evaluator's detection runs skip it)."""
        self.windows.expire(t_eval)
        self.concentration.expire(t_eval)
        rows = self.windows.window_rows(t_eval, windows_s)
        return SharePartial(t_eval=t_eval, max_event_ts=self.max_event_ts,
                            windows={window: [WindowRow._make(row) for row in rows[window]]
                                     for window in windows_s},
                            concentration=[ConcentrationRow._make(row)
                                           for row in self.concentration.rows(t_eval)]
                            if concentration else [])


def block_facts_state(facts: BlockFacts) -> dict[str, Any]:
    """A block's facts as JSON (work as a decimal string: it exceeds 64 bits)."""
    body = dataclasses.asdict(facts)
    body["work"] = str(facts.work)
    return body


def block_facts_from_state(body: dict[str, Any]) -> BlockFacts:
    return BlockFacts(**{**body, "work": int(body["work"])})


@dataclass
class ChainPartition:
    """The best chain seen on the ``blocks`` topic (one partition)."""

    chain: BestChain
    pools: PoolDirectory
    next_offset: int = 0
    unacked: list[Any] = field(default_factory=list)
    last_checkpoint: float = 0.0
    changed: bool = True  # Redis copies need (re)writing: new blocks, or just restored

    def apply(self, raw: bytes | None, record_time_s: float | None = None) -> BlockFacts:
        if raw is None:
            raise InvalidEvent("$", "empty message (no value)")
        event = decode_input(raw, now=decision_time(record_time_s, time.time()))
        if event.type != "block":
            raise InvalidEvent("type", f"expected block, got {event.type}")
        try:
            facts = describe_block(event.model_dump(mode="json", exclude_none=True), self.pools)
        except InvalidEvent:
            raise
        except ValueError as exc:
            raise InvalidEvent("$", str(exc)) from None
        self.chain.add(facts)
        self.changed = True
        return facts

    def checkpoint(self) -> bytes:
        return encode_checkpoint({
            "next_offset": self.next_offset,
            "blocks": [block_facts_state(b) for b in self.chain.blocks()],
        })

    @classmethod
    def restore(cls, raw: bytes | None, pools: PoolDirectory) -> ChainPartition:
        state = cls(chain=BestChain(), pools=pools)
        if raw is None:
            return state
        body = decode_checkpoint(raw)
        for block in body["blocks"]:
            state.chain.add(block_facts_from_state(block))
        state.next_offset = int(body["next_offset"])
        return state

    def summary(self, coverage_blocks: int = COVERAGE_BLOCKS,
                fee_blocks: int = FEE_BLOCKS) -> ChainSummary:
        """What the snapshot leader needs from the chain: rates, pool work, fees, tip."""
        chain = self.chain
        tip = chain.tip
        if tip is None:
            return ChainSummary()
        rates = {}
        for n in RATE_WINDOWS:
            est = network_hashrate_from_blocks(chain.times(n + 1), chain.works(n + 1), n)
            if est is not None:
                rates[n] = BlockRate(est.hashrate_hs, est.ci95_hs[0], est.ci95_hs[1], est.blocks,
                                     est.span_s)
        pools = chain.pools(coverage_blocks)
        works = chain.works(coverage_blocks)
        pool_work: dict[str, float] = {}
        for pool, work in zip(pools.tolist(), works.tolist(), strict=True):
            pool_work[pool] = pool_work.get(pool, 0.0) + work
        fees = [b.fees_sat for b in chain.blocks(fee_blocks) if b.fees_sat is not None]
        covered = chain.blocks(coverage_blocks)
        return ChainSummary(
            blocks=len(chain), tip_height=tip.height, tip_time=tip.time,
            difficulty=tip.difficulty, subsidy_sat=tip.subsidy_sat,
            mean_fees_sat=float(np.mean(fees)) if fees else None,
            rates=rates, pool_work=pool_work,
            coverage_pools=pools.tolist(), coverage_works=works.tolist(),
            pool_blocks={str(p): int(c) for p, c in zip(*np.unique(pools, return_counts=True),
                                                       strict=True)},
            coverage_heights=[b.height for b in covered],
            coverage_times=[b.time for b in covered],
            coverage_difficulties=[b.difficulty for b in covered],
            coverage_details=[b.attribution_detail for b in covered],
            coverage_conflicts=[b.conflicting_pool_slug for b in covered],
            coverage_subsidies=[b.subsidy_sat for b in covered],
            coverage_fees=[b.fees_sat for b in covered],
            pool_names={b.pool_slug: b.pool for b in covered},
        )


@dataclass
class MarketPartition:
    """The latest BTC/USD price from the ``market`` topic."""

    btc_usd: float | None = None
    ts: float = 0.0
    source: str | None = None
    next_offset: int = 0
    unacked: list[Any] = field(default_factory=list)
    last_checkpoint: float = 0.0
    changed: bool = True

    def apply(self, raw: bytes | None, record_time_s: float | None = None) -> None:
        if raw is None:
            raise InvalidEvent("$", "empty message (no value)")
        event = decode_input(raw, now=decision_time(record_time_s, time.time()))
        if event.type != "price":
            raise InvalidEvent("type", f"expected price, got {event.type}")
        if event.ts >= self.ts:
            self.btc_usd, self.ts, self.source = event.btc_usd, event.ts, event.source
            self.changed = True

    def partial(self) -> PricePartial:
        return PricePartial(btc_usd=self.btc_usd, ts=self.ts, source=self.source)

    def checkpoint(self) -> bytes:
        return encode_checkpoint({"next_offset": self.next_offset, "btc_usd": self.btc_usd,
                                  "ts": self.ts, "source": self.source})

    @classmethod
    def restore(cls, raw: bytes | None) -> MarketPartition:
        if raw is None:
            return cls()
        body = decode_checkpoint(raw)
        return cls(btc_usd=body["btc_usd"], ts=body["ts"], source=body["source"],
                   next_offset=int(body["next_offset"]))
