"""The chain summary: what the worker owning ``blocks`` tells the snapshot leader, and its JSON.

Also the block windows, defined once: the summary carries the network hashrate over each of
``RATE_WINDOWS``; the snapshot reads ``NOWCAST_BLOCKS`` (``EstimationConfig.block_window``) and
the first of ``PLAUSIBILITY_BLOCKS`` present; pool coverage is judged over ``COVERAGE_BLOCKS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

#: Blocks of the block-derived rate the nowcast blends with the sample.
NOWCAST_BLOCKS = 120
#: A day of blocks.
DAY_BLOCKS = 144
#: Blocks of the rate bounding a pool's plausible hashrate (the first one the summary has).
PLAUSIBILITY_BLOCKS = (2016, 1008)
#: Block windows whose network hashrate the chain summary carries.
RATE_WINDOWS = tuple(sorted({NOWCAST_BLOCKS, DAY_BLOCKS, *PLAUSIBILITY_BLOCKS}))
#: Blocks over which pool coverage and the pools section are judged.
COVERAGE_BLOCKS = 2016
#: Blocks whose facts the worker keeps in Redis for the API (``/v1/blocks``).
RECENT_BLOCKS_KEPT = 2016
#: Blocks whose fees give the mean fee per block.
FEE_BLOCKS = 144


@dataclass(frozen=True)
class BlockRate:
    """The network hashrate over the last ``blocks`` blocks (GetNetworkHashPS), 95 % interval."""

    hashrate_hs: float
    lower_hs: float
    upper_hs: float
    blocks: int
    span_s: float

    def to_row(self) -> list[float | int]:
        return [self.hashrate_hs, self.lower_hs, self.upper_hs, self.blocks, self.span_s]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> BlockRate:
        hashrate, lower, upper, blocks, span = row
        return cls(float(hashrate), float(lower), float(upper), int(blocks), float(span))


@dataclass(frozen=True)
class ChainTip:
    """The best chain's tip: what the threshold and hashprice are computed from."""

    height: int
    time: float
    difficulty: float
    subsidy_sat: int


@dataclass(frozen=True)
class ChainSummary:
    """Rates, pool work, fees and tip of the best chain; the ``coverage_*`` lists hold one
    entry per block of the coverage window, oldest first. ``blocks`` 0: no chain yet (every
    other field empty)."""

    blocks: int = 0
    tip_height: int | None = None
    tip_time: float | None = None
    difficulty: float | None = None
    subsidy_sat: int | None = None
    mean_fees_sat: float | None = None
    rates: Mapping[int, BlockRate] = field(default_factory=dict)
    pool_work: Mapping[str, float] = field(default_factory=dict)
    pool_blocks: Mapping[str, int] = field(default_factory=dict)
    pool_names: Mapping[str, str] = field(default_factory=dict)
    coverage_pools: Sequence[str] = ()
    coverage_works: Sequence[float] = ()
    coverage_heights: Sequence[int] = ()
    coverage_times: Sequence[float] = ()
    coverage_difficulties: Sequence[float] = ()
    coverage_details: Sequence[str] = ()
    coverage_conflicts: Sequence[str | None] = ()
    coverage_subsidies: Sequence[int] = ()
    coverage_fees: Sequence[int | None] = ()

    @property
    def tip(self) -> ChainTip | None:
        """The tip's facts together, typed; None with no chain yet."""
        if (self.tip_height is None or self.tip_time is None or self.difficulty is None
                or self.subsidy_sat is None):
            return None
        return ChainTip(self.tip_height, self.tip_time, self.difficulty, self.subsidy_sat)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON: what Redis holds (``build_snapshot`` reads the summary itself)."""
        if not self.blocks:
            return {"blocks": 0}
        return {
            "blocks": self.blocks, "tip_height": self.tip_height, "tip_time": self.tip_time,
            "difficulty": self.difficulty, "subsidy_sat": self.subsidy_sat,
            "mean_fees_sat": self.mean_fees_sat,
            "hashrates": {str(n): rate.to_row() for n, rate in self.rates.items()},
            "pool_work": dict(self.pool_work),
            "coverage_pools": list(self.coverage_pools),
            "coverage_works": list(self.coverage_works),
            "pool_blocks": dict(self.pool_blocks),
            "coverage_heights": list(self.coverage_heights),
            "coverage_times": list(self.coverage_times),
            "coverage_difficulties": list(self.coverage_difficulties),
            "coverage_details": list(self.coverage_details),
            "coverage_conflicts": list(self.coverage_conflicts),
            "coverage_subsidies": list(self.coverage_subsidies),
            "coverage_fees": list(self.coverage_fees),
            "pool_names": dict(self.pool_names),
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ChainSummary:
        if not body.get("blocks"):
            return cls()
        return cls(
            blocks=int(body["blocks"]), tip_height=int(body["tip_height"]),
            tip_time=float(body["tip_time"]), difficulty=float(body["difficulty"]),
            subsidy_sat=int(body["subsidy_sat"]),
            mean_fees_sat=(float(body["mean_fees_sat"])
                           if body.get("mean_fees_sat") is not None else None),
            rates={int(n): BlockRate.from_row(row) for n, row in body["hashrates"].items()},
            pool_work={str(p): float(w) for p, w in body["pool_work"].items()},
            pool_blocks={str(p): int(c) for p, c in body["pool_blocks"].items()},
            pool_names={str(s): str(n) for s, n in body["pool_names"].items()},
            coverage_pools=list(body["coverage_pools"]),
            coverage_works=list(body["coverage_works"]),
            coverage_heights=list(body["coverage_heights"]),
            coverage_times=list(body["coverage_times"]),
            coverage_difficulties=list(body["coverage_difficulties"]),
            coverage_details=list(body["coverage_details"]),
            coverage_conflicts=list(body["coverage_conflicts"]),
            coverage_subsidies=list(body["coverage_subsidies"]),
            coverage_fees=list(body["coverage_fees"]),
        )


def encode_chain_summary(summary: ChainSummary) -> bytes:
    """The JSON the worker writes to Redis."""
    return orjson.dumps(summary.to_json())


def decode_chain_summary(raw: bytes | str) -> ChainSummary:
    return ChainSummary.from_json(orjson.loads(raw))
