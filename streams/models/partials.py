"""What a worker writes to Redis for the snapshot leader, per input, and how it is encoded.

A share partition's partial holds its window totals per (pool, region) at one evaluation time;
the leader merges every partition's (``streams.core.snapshot.merge_partials``). The ``market``
input's partial is the latest BTC/USD price. The worker encodes with ``encode``, the leader
decodes with ``decode``: the JSON written to Redis is defined here only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import orjson


class WindowRow(NamedTuple):
    """Totals of one (pool, region) over one window (``ShareWindows.window_rows``).

    A named tuple, not a dataclass: a partial holds thousands of rows, written every second,
    and on the wire each is a JSON array in this field order."""

    pool: str
    region: str
    share_count: float  # ``count`` would hide tuple.count
    difficulty_sum: float
    difficulty_sq_sum: float
    effective_seconds: float
    share_scale: float

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> WindowRow:
        pool, region, count, dsum, dsq, t_eff, scale = row
        return cls(str(pool), str(region), float(count), float(dsum), float(dsq), float(t_eff),
                   float(scale))


class ConcentrationRow(NamedTuple):
    """How concentrated one (pool, region)'s work is in few mining accounts, over the headline
    window (``core/account_concentration``): Σ D·HHI and the difficulty with and without an
    account report."""

    pool: str
    region: str
    weighted_hhi: float
    reported_difficulty: float
    unreported_difficulty: float

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> ConcentrationRow:
        pool, region, weighted, reported, unreported = row
        return cls(str(pool), str(region), float(weighted), float(reported), float(unreported))


@dataclass(frozen=True)
class SharePartial:
    """One ``share-batches`` partition's window totals at ``t_eval``, for the leader to merge.

    ``partition``, ``next_offset``, ``last_event_wall`` and ``updated_at`` are set by the worker
    that owns the partition (``None``/0 for a partial computed outside a worker)."""

    t_eval: float
    max_event_ts: float
    #: Window length (s) → rows of the keys with shares in that window.
    windows: Mapping[float, Sequence[WindowRow]] = field(default_factory=dict)
    #: Per (pool, region) with shares in the headline window; empty from older workers.
    concentration: Sequence[ConcentrationRow] = ()
    partition: int | None = None
    next_offset: int | None = None
    last_event_wall: float = 0.0
    updated_at: float | None = None

    def at_partition(self, partition: int, next_offset: int, last_event_wall: float,
                     updated_at: float) -> SharePartial:
        """This partial as the worker owning ``partition`` publishes it."""
        return replace(self, partition=partition, next_offset=next_offset,
                       last_event_wall=last_event_wall, updated_at=updated_at)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "t_eval": self.t_eval,
            "max_event_ts": self.max_event_ts,
            "windows": {str(int(window)): [tuple(row) for row in rows]
                        for window, rows in self.windows.items()},
            "concentration": [tuple(row) for row in self.concentration],
        }
        if self.partition is not None:
            body.update(partition=self.partition, next_offset=self.next_offset,
                        last_event_wall=self.last_event_wall, updated_at=self.updated_at)
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SharePartial:
        partition = body.get("partition")
        next_offset = body.get("next_offset")
        updated_at = body.get("updated_at")
        return cls(
            t_eval=float(body["t_eval"]),
            max_event_ts=float(body["max_event_ts"]),
            windows={float(window): [WindowRow.from_json(row) for row in rows]
                     for window, rows in body["windows"].items()},
            concentration=[ConcentrationRow.from_json(row)
                           for row in body.get("concentration", ())],
            partition=int(partition) if partition is not None else None,
            next_offset=int(next_offset) if next_offset is not None else None,
            last_event_wall=float(body.get("last_event_wall", 0.0)),
            updated_at=float(updated_at) if updated_at is not None else None,
        )


@dataclass(frozen=True)
class PricePartial:
    """The latest BTC/USD price the ``market`` input holds."""

    btc_usd: float | None
    ts: float
    source: str | None

    def to_json(self) -> dict[str, Any]:
        return {"btc_usd": self.btc_usd, "ts": self.ts, "source": self.source}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PricePartial:
        btc_usd = body.get("btc_usd")
        return cls(btc_usd=float(btc_usd) if btc_usd is not None else None,
                   ts=float(body.get("ts", 0.0)), source=body.get("source"))


def encode(model: SharePartial | PricePartial) -> bytes:
    """The JSON a worker writes to Redis."""
    return orjson.dumps(model.to_json())


def decode_share_partial(raw: bytes | str) -> SharePartial:
    return SharePartial.from_json(orjson.loads(raw))


def decode_price_partial(raw: bytes | str) -> PricePartial:
    return PricePartial.from_json(orjson.loads(raw))
