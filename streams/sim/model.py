"""The simulated mining world over time: hashrate by region and pool, shares, blocks, prices, truth.

Pure numpy (no I/O): a :class:`Simulator` walks the world step by step and yields, per step, the
input events of CONTRACTS.md it would produce and, once per truth step, the ground truth.

How the world is built
* Each leaf region r holds capacity C_r(t) = H0 · s_r · e^{g·t} · Π shocks · e^{x_r(t)}: its share
  of the start network, a trend, the scripted shocks (multipliers) and an AR(1) log wander x_r.
  The network is Σ C_r, so a shock removes hashrate rather than moving it: when Kazakhstan goes
  dark every other region's *share* rises, as it did in January 2022.
* Pools: a_{p,r} is the part of region r's hashrate that mines at pool p. A sampled pool without a
  mix holds the same part of every region (its hashers are spread like the network); with a mix it
  holds share_p · mix_{p,r} / s_r. Unsampled pools and the unidentified rest share what the sampled
  pools leave of each region, in proportion to their network shares. A pool's hashrate is then
  Σ_r a_{p,r} C_r(t), so coverage moves when a region the sampled pools favour goes dark.
* Shares: vardiff gives each worker the power of two nearest to its hashrate × the pool's share
  interval / 2³²; machines of the fleet are spread over their hash-rate range, which fixes what
  part of the hashrate each difficulty class carries. Per step the count of each (pool, region,
  class) is Poisson with mean hashrate · step / (d · 2³²); a batch carries count, Σd, Σd². A
  binomial part of the counts can leave as single ``share`` events instead (same totals).
* VPN exits change only the sample: part of a region's shares is reported from another region.
* Blocks: a block needs Exp(1) × its work (``work_from_bits``) of network hashing, so arrivals are
  Poisson with rate H/work. Bits come from the difficulty (compact encoding); with ``retarget``
  the difficulty is adjusted every 2016 blocks as Bitcoin does (span of the period's first to last
  block time, clamped to ×4, target scaled, re-encoded). Blocks before the first simulated one are
  taken to have come every 600 s. The finder is drawn by the pools' current hashrate; blocks of
  the unidentified rest carry no pool. Hashes are random numbers below the target (well formed,
  not real proof of work), each block's ``prev_hash`` is the previous block's hash. With
  ``history_blocks`` the chain's recent past (mined by the start world at the start difficulty)
  is sent first, so coverage and block hashrate are known from the start, as with a real feed.
* BTC/USD: a geometric random walk without drift, one ``price`` event per market interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.core.blocks import (
    DIFFICULTY_1_TARGET,
    block_subsidy_sat,
    target_from_bits,
    work_from_bits,
)
from streams.core.regions import country_of
from streams.core.units import HASHES_PER_DIFFICULTY
from streams.sim.scenario import MachineSpec, Scenario, ShockSpec

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

TARGET_BLOCK_S = 600
RETARGET_INTERVAL = 2016
RETARGET_TIMESPAN_S = RETARGET_INTERVAL * TARGET_BLOCK_S
SECONDS_PER_DAY = 86400.0
SAT_PER_BTC = 100_000_000
#: Points per machine model at which its hash-rate range is sampled to find vardiff classes.
RANGE_POINTS = 16
UNKNOWN_POOL = "unknown"


# ---- chain arithmetic ---------------------------------------------------------------------------


def compact_from_target(target: int) -> int:
    """Compact ``bits`` of a target, as Bitcoin Core's ``GetCompact`` encodes it (rounds down)."""
    if target <= 0:
        raise ValueError("target must be positive")
    size = (target.bit_length() + 7) // 8
    mantissa = target << (8 * (3 - size)) if size <= 3 else target >> (8 * (size - 3))
    if mantissa & 0x00800000:  # the sign bit: move one byte up instead
        mantissa >>= 8
        size += 1
    return (size << 24) | mantissa


def bits_for_difficulty(difficulty: float) -> str:
    """8-hex-digit compact bits of the target closest below a difficulty."""
    if not (difficulty >= 1.0 and math.isfinite(difficulty)):
        raise ValueError(f"difficulty must be at least 1, got {difficulty}")
    ratio = Fraction(difficulty)
    target = DIFFICULTY_1_TARGET * ratio.denominator // ratio.numerator
    return f"{compact_from_target(target):08x}"


def retarget_bits(bits: str, timespan_s: int) -> str:
    """Bits of the next period from the last one and its span (Bitcoin's 2016-block rule)."""
    span = min(max(timespan_s, RETARGET_TIMESPAN_S // 4), RETARGET_TIMESPAN_S * 4)
    target = min(target_from_bits(bits) * span // RETARGET_TIMESPAN_S, DIFFICULTY_1_TARGET)
    return f"{compact_from_target(target):08x}"


# ---- fleet and vardiff --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareClasses:
    """Vardiff classes of one pool: difficulty, part of the hashrate, workers per H/s."""

    difficulty: FloatArray
    hashrate_fraction: FloatArray
    workers_per_hs: FloatArray


def share_classes(machines: list[MachineSpec], share_interval_s: float) -> ShareClasses:
    """Group the fleet by the power-of-two difficulty vardiff assigns each machine."""
    by_difficulty: dict[float, list[float]] = {}
    for machine in machines:
        low, high = (v * 1e12 for v in machine.hashrate_ths)
        edges = np.linspace(low, high, RANGE_POINTS + 1)
        rates = (edges[:-1] + edges[1:]) / 2 if high > low else np.array([low])
        part = machine.share_pct / 100.0 / rates.size
        exponents = np.maximum(0, np.rint(np.log2(rates * share_interval_s
                                                  / HASHES_PER_DIFFICULTY)))
        for rate, exponent in zip(rates, exponents, strict=True):
            entry = by_difficulty.setdefault(float(2.0**exponent), [0.0, 0.0])
            entry[0] += part
            entry[1] += part / float(rate)
    ordered = sorted(by_difficulty)
    return ShareClasses(
        difficulty=np.array(ordered),
        hashrate_fraction=np.array([by_difficulty[d][0] for d in ordered]),
        workers_per_hs=np.array([by_difficulty[d][1] for d in ordered]),
    )


# ---- shocks -------------------------------------------------------------------------------------


def shock_effect(shock: ShockSpec, offset_s: float) -> float:
    """How much of the shock is in effect at ``offset_s``: 0 before, 1 at full effect."""
    if offset_s < shock.at:
        return 0.0
    fall = shock.fall_s
    rising = 1.0 if fall <= 0 else min(1.0, (offset_s - shock.at) / fall)
    recovery = shock.recovery_s
    if recovery is None or shock.hold is None:
        return rising
    recovery_start = shock.at + fall + shock.hold
    if offset_s < recovery_start:
        return rising
    if recovery <= 0:
        return 0.0
    return max(0.0, 1.0 - (offset_s - recovery_start) / recovery)


def shock_timeline(shock: ShockSpec, start_ts: float) -> dict[str, Any]:
    """Absolute times and direction of a shock, for the truth file (the evaluator reads them)."""
    onset = start_ts + shock.at
    full = onset + shock.fall_s
    entry: dict[str, Any] = {
        "name": shock.name, "kind": shock.kind, "region": shock.region,
        "country": None if shock.region is None else country_of(shock.region),
        "direction": shock.direction, "pools": shock.pools,
        "onset": onset, "full_effect": full, "factor": shock.factor,
        "recovery_start": None, "recovery_end": None,
        "exit_region": shock.exit_region, "fraction": shock.fraction,
    }
    recovery = shock.recovery_s
    if shock.hold is not None and recovery is not None:
        entry["recovery_start"] = full + shock.hold
        entry["recovery_end"] = full + shock.hold + recovery
    return entry


# ---- the world ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FarmTable:
    """The farms of the farmed leaves (``Scenario.farms``) and their pool switches over time."""

    leaves: IntArray  # the farmed leaves (their allocation columns come from the farms)
    leaf: IntArray  # leaf of each farm
    size: FloatArray  # each farm's part of its leaf's hashrate
    pool: IntArray  # allocation row each farm mines at from the start
    switch_t: FloatArray  # offsets of the pool switches, in time order
    switch_farm: IntArray
    switch_pool: IntArray

    def pools_at(self, offset_s: float) -> IntArray:
        """The allocation row each farm mines at ``offset_s``."""
        done = int(np.searchsorted(self.switch_t, offset_s, side="right"))
        pools = self.pool.copy()
        if done:
            farms = self.switch_farm[:done][::-1]
            _, last = np.unique(farms, return_index=True)  # the latest switch of each farm
            pools[farms[last]] = self.switch_pool[:done][::-1][last]
        return pools


@dataclass(frozen=True)
class PoolShock:
    """A shock that hits only some pools' hashers: rows and leaves it hits, and for ``switch``
    the rows the hashers move to with their weights."""

    shock: ShockSpec
    rows: IntArray
    leaves: IntArray
    targets: IntArray
    weights: FloatArray


def draw_farms(scenario: Scenario, allocation: FloatArray, leaves: tuple[str, ...],
               rng: np.random.Generator) -> FarmTable | None:
    """Farms of ``scenario.farms``: log-normal sizes, each at one pool drawn by the allocation
    column of its leaf; switches as a Poisson process per farm over the scenario."""
    spec = scenario.farms
    if spec is None:
        return None
    farmed = list(dict.fromkeys(leaf for code in spec.regions
                                for leaf in scenario.leaves_of(code)))
    index = np.array([leaves.index(leaf) for leaf in farmed], dtype=np.int64)
    leaf_of, sizes, pools = [], [], []
    rows = allocation.shape[0]
    for column in index.tolist():
        weights = allocation[:, column] / allocation[:, column].sum()
        raw = rng.lognormal(0.0, spec.sigma, spec.count)
        leaf_of.append(np.full(spec.count, column, dtype=np.int64))
        sizes.append(raw / raw.sum())
        pools.append(rng.choice(rows, size=spec.count, p=weights))
    leaf = np.concatenate(leaf_of)
    switches = rng.poisson(spec.switches_per_day * scenario.duration / SECONDS_PER_DAY, leaf.size)
    switch_farm = np.repeat(np.arange(leaf.size, dtype=np.int64), switches)
    switch_t = rng.random(switch_farm.size) * scenario.duration
    columns = allocation / allocation.sum(axis=0, keepdims=True)
    switch_pool = np.array([rng.choice(rows, p=columns[:, leaf[f]])
                            for f in switch_farm.tolist()], dtype=np.int64)
    order = np.argsort(switch_t, kind="stable")
    return FarmTable(leaves=index, leaf=leaf, size=np.concatenate(sizes),
                     pool=np.concatenate(pools).astype(np.int64), switch_t=switch_t[order],
                     switch_farm=switch_farm[order],
                     switch_pool=switch_pool.reshape(-1)[order] if switch_pool.size
                     else np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class World:
    """The scenario compiled into arrays: regions, pools, allocation, vardiff classes."""

    scenario: Scenario
    leaves: tuple[str, ...]
    base_share: FloatArray
    pool_names: tuple[str, ...]
    pool_slugs: tuple[str, ...]
    sampled: npt.NDArray[np.bool_]
    #: allocation[p, r]: part of leaf r's hashrate mining at pool p (last row: unidentified).
    allocation: FloatArray
    sample_regions: tuple[str, ...]
    difficulties: FloatArray
    #: class_weight[q, c]: part of sampled pool q's hashrate in vardiff class c.
    class_weight: FloatArray
    workers_per_hs: FloatArray
    shock_leaves: tuple[IntArray, ...]
    vpn_exits: tuple[int, ...]
    #: Shocks that hit only some pools' hashers (``ShockSpec.pools``).
    pool_shocks: tuple[PoolShock, ...] = ()
    farms: FarmTable | None = None
    #: feed_lag[q]: seconds sampled pool q's batches reach the pipeline after they end.
    feed_lag: FloatArray = field(default_factory=lambda: np.zeros(0))

    @property
    def pool_effects(self) -> bool:
        """True when pools, not only regions, shape the world (pool shocks or farms)."""
        return bool(self.pool_shocks) or self.farms is not None

    @property
    def sampled_index(self) -> IntArray:
        return np.flatnonzero(self.sampled[:-1]).astype(np.int64)

    def capacity_factors(self, offset_s: float) -> FloatArray:
        """Product of the hashrate shocks' multipliers per leaf at ``offset_s``."""
        factors = np.ones(len(self.leaves))
        for shock, leaves in zip(self.scenario.shocks, self.shock_leaves, strict=True):
            if shock.kind in ("vpn", "switch") or shock.factor is None or shock.pools:
                continue
            effect = shock_effect(shock, offset_s)
            if effect > 0:
                factors[leaves] *= 1.0 + (shock.factor - 1.0) * effect
        return factors

    def allocation_at(self, offset_s: float) -> FloatArray:
        """allocation[p, r] at ``offset_s``: farmed leaves' columns follow their farms."""
        farms = self.farms
        if farms is None:
            return self.allocation
        allocation = self.allocation.copy()
        allocation[:, farms.leaves] = 0.0
        np.add.at(allocation, (farms.pools_at(offset_s), farms.leaf), farms.size)
        return allocation

    def pool_cells(self, capacity: FloatArray, offset_s: float) -> FloatArray:
        """cells[p, r]: hashrate of pool p's hashers in leaf r (last row: unidentified), with
        the pool shocks applied. Without pool effects the columns sum to ``capacity``."""
        cells = self.allocation_at(offset_s) * capacity[None, :]
        for hit in self.pool_shocks:
            shock = hit.shock
            effect = shock_effect(shock, offset_s)
            if effect <= 0 or shock.factor is None:
                continue
            block = np.ix_(hit.rows, hit.leaves)
            if shock.kind == "switch":
                moved = cells[block] * ((1.0 - shock.factor) * effect)
                cells[block] -= moved
                cells[np.ix_(hit.targets, hit.leaves)] += (hit.weights[:, None]
                                                           * moved.sum(axis=0)[None, :])
            else:
                cells[block] *= 1.0 + (shock.factor - 1.0) * effect
        return cells

    def sample_rates(self, capacity: FloatArray, offset_s: float,
                     cells: FloatArray | None = None) -> FloatArray:
        """Hashrate each sampled pool shows per sample region (VPN exits applied); ``cells``
        from `pool_cells` when already computed."""
        pools = self.sampled_index
        rates = np.zeros((pools.size, len(self.sample_regions)))
        if cells is None and not self.pool_effects:
            rates[:, : len(self.leaves)] = self.allocation[pools] * capacity[None, :]
        else:
            if cells is None:
                cells = self.pool_cells(capacity, offset_s)
            rates[:, : len(self.leaves)] = cells[pools]
        for shock, leaves, exit_index in zip(
            self.scenario.shocks, self.shock_leaves, self.vpn_exits, strict=True
        ):
            if shock.kind != "vpn" or shock.fraction is None:
                continue
            moved = rates[:, leaves] * (shock.fraction * shock_effect(shock, offset_s))
            rates[:, leaves] -= moved
            rates[:, exit_index] += moved.sum(axis=1)
        return rates


def _allocation(scenario: Scenario, leaves: tuple[str, ...], base: FloatArray
                ) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Each pool's hashrate per leaf region (rows: pools, then the unidentified rest), as the
    module docstring's allocation rule says; and which rows are sampled."""
    pools = scenario.pools
    pool_share = np.array([p.network_share_pct for p in pools]) / 100.0
    sampled = np.array([p.sampled for p in pools] + [False])
    allocation = np.zeros((len(pools) + 1, len(leaves)))
    safe_base = np.where(base > 0, base, 1.0)
    for index, pool in enumerate(pools):
        if not pool.sampled:
            continue
        mix = scenario.pool_mix(pool)
        if not mix:
            allocation[index] = pool_share[index]
        else:
            fractions = np.array([mix.get(leaf, 0.0) for leaf in leaves])
            allocation[index] = np.where(base > 0, pool_share[index] * fractions / safe_base, 0.0)
    residual = np.clip(1.0 - allocation[sampled].sum(axis=0), 0.0, None)
    unsampled_total = 1.0 - float(pool_share[sampled[:-1]].sum())
    if unsampled_total > 1e-12:
        for index, pool in enumerate(pools):
            if not pool.sampled:
                allocation[index] = residual * pool_share[index] / unsampled_total
        rest = max(0.0, unsampled_total - float(pool_share[~sampled[:-1]].sum()))
        allocation[-1] = residual * rest / unsampled_total
    return allocation, sampled


def _pool_shocks(scenario: Scenario, shock_leaves: tuple[npt.NDArray[np.int64], ...]
                 ) -> list[PoolShock]:
    """Shocks that move hashrate between pools: the pools hit, and where their hashrate goes."""
    pools = scenario.pools
    pool_share = np.array([p.network_share_pct for p in pools]) / 100.0
    names = [p.name for p in pools]
    rest_share = max(0.0, 1.0 - float(pool_share.sum()))
    pool_shocks = []
    for shock, hit_leaves in zip(scenario.shocks, shock_leaves, strict=True):
        if not shock.pools:
            continue
        rows = np.array([names.index(n) for n in shock.pools], dtype=np.int64)
        if shock.to_pools:
            targets = [names.index(n) for n in shock.to_pools]
        else:
            targets = [i for i, p in enumerate(pools) if not p.sampled and i not in rows]
            targets.append(len(pools))  # the unidentified rest
        weights = np.array([pool_share[i] if i < len(pools) else rest_share for i in targets])
        weights = (weights / weights.sum() if weights.sum() > 0
                   else np.full(len(targets), 1.0 / len(targets)))
        pool_shocks.append(PoolShock(shock, rows, hit_leaves,
                                     np.array(targets, dtype=np.int64), weights))
    return pool_shocks


def _share_classes(scenario: Scenario) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The share difficulties in use, and per sampled pool the hashrate fraction and workers per
    H/s at each."""
    classes = [share_classes(scenario.machines, p.share_interval)
               for p in scenario.pools if p.sampled]
    difficulties = np.array(sorted({float(d) for c in classes for d in c.difficulty}))
    class_weight = np.zeros((len(classes), difficulties.size))
    workers = np.zeros((len(classes), difficulties.size))
    for row, pool_classes in enumerate(classes):
        columns = np.searchsorted(difficulties, pool_classes.difficulty)
        class_weight[row, columns] = pool_classes.hashrate_fraction
        workers[row, columns] = pool_classes.workers_per_hs
    return difficulties, class_weight, workers


def build_world(scenario: Scenario, seed: int | None = None) -> World:
    """Compile a scenario (see the module docstring for the allocation rule); farms, if the
    scenario has them, are drawn from ``seed`` (default: the scenario's)."""
    leaves = tuple(scenario.regions)
    base = np.array([scenario.regions[r] for r in leaves]) / 100.0
    base = base / base.sum()
    pools = scenario.pools
    allocation, sampled = _allocation(scenario, leaves, base)
    exits = [s.exit_region for s in scenario.shocks if s.exit_region is not None]
    sample_regions = leaves + tuple(dict.fromkeys(e for e in exits if e not in leaves))
    shock_leaves = tuple(
        np.array([leaves.index(leaf) for leaf in scenario.leaves_of(s.region)], dtype=np.int64)
        if s.region is not None else np.arange(len(leaves), dtype=np.int64)
        for s in scenario.shocks
    )
    farm_rng = np.random.default_rng([scenario.seed if seed is None else seed, 0xFA57])
    farms = draw_farms(scenario, allocation, leaves, farm_rng)
    vpn_exits = tuple(
        sample_regions.index(s.exit_region) if s.exit_region is not None else -1
        for s in scenario.shocks
    )
    difficulties, class_weight, workers = _share_classes(scenario)
    return World(
        scenario=scenario,
        leaves=leaves,
        base_share=base,
        pool_names=tuple(p.name for p in pools),
        pool_slugs=tuple(p.slug for p in pools),
        sampled=sampled,
        allocation=allocation,
        sample_regions=sample_regions,
        difficulties=difficulties,
        class_weight=class_weight,
        workers_per_hs=workers,
        shock_leaves=shock_leaves,
        vpn_exits=vpn_exits,
        pool_shocks=tuple(_pool_shocks(scenario, shock_leaves)),
        farms=farms,
        feed_lag=np.array([p.feed_lag for p in pools if p.sampled]),
    )


def account_concentration(world: World, offset: float, rates: FloatArray
                          ) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """HHI of the mining accounts per (sampled pool, sample region) and their number: a farmed
    leaf's accounts are its farms at that pool (one stratum account per farm); elsewhere every
    worker is its own account (vardiff classes' worker counts at the pair's hashrate)."""
    workers = np.maximum(1.0, rates[:, :, None] * world.workers_per_hs[:, None, :])
    hhi = (np.square(world.class_weight)[:, None, :] / workers).sum(axis=2)
    accounts = np.ceil(workers.sum(axis=2)).astype(np.int64)
    farms = world.farms
    if farms is not None:
        at = farms.pools_at(offset)
        for q, row in enumerate(world.sampled_index.tolist()):
            for leaf in farms.leaves.tolist():
                sizes = farms.size[(farms.leaf == leaf) & (at == row)]
                total = float(sizes.sum())
                hhi[q, leaf] = float(np.square(sizes).sum()) / total**2 if total > 0 else 0.0
                accounts[q, leaf] = sizes.size
    return hhi, accounts


def account_fields(count: int, dsum: float, dsq: float, hhi: float, accounts: int
                   ) -> dict[str, Any]:
    """A batch's optional account fields, as a proxy would report them: the expected
    Σ_a (Σd)² of shares falling to accounts of concentration ``hhi``, Σd² + HHI·((Σd)² − Σd²)."""
    return {"accounts": max(1, min(accounts, count)),
            "account_difficulty_sq_sum": dsq + hhi * (dsum * dsum - dsq)}



# ---- the simulator ------------------------------------------------------------------------------


@dataclass
class ChainState:
    """The tip the next block builds on, and what the retarget needs."""

    height: int
    prev_hash: str
    bits: str
    work: int
    last_time: int
    period_start_time: int | None
    work_needed: float = 0.0


@dataclass(frozen=True)
class StepOutput:
    """What one model step produced: events in time order, and truth when a truth step is due."""

    t: float
    end: float
    events: list[dict[str, Any]]
    truth: dict[str, Any] | None = None


@dataclass
class _Rollups:
    """Index maps from leaves / sample regions to the codes truth reports (leaves + countries)."""

    codes: list[str] = field(default_factory=list)
    leaf_to_code: list[list[int]] = field(default_factory=list)
    sample_to_code: list[list[int]] = field(default_factory=list)


def _rollups(world: World) -> _Rollups:
    codes = list(dict.fromkeys([*world.sample_regions,
                                *(country_of(c) for c in world.sample_regions)]))
    rollups = _Rollups(codes=codes)
    for regions, target in ((world.leaves, rollups.leaf_to_code),
                            (world.sample_regions, rollups.sample_to_code)):
        for code in regions:
            indices = [codes.index(code)]
            country = country_of(code)
            if country != code:
                indices.append(codes.index(country))
            target.append(indices)
    return rollups


def _rolled(values: FloatArray, mapping: list[list[int]], size: int) -> FloatArray:
    out = np.zeros(size)
    for value, targets in zip(values, mapping, strict=True):
        out[targets] += value
    return out


def _worker_ids(keys: IntArray) -> list[str]:
    """Stable pseudo-random 16-hex-digit worker names (splitmix64 of an integer key)."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return [f"{int(v):016x}" for v in z]


class Simulator:
    """Walks a scenario's world from ``start_ts`` in steps of ``scenario.step_s``.

    ``single_share_fraction`` overrides the scenario's; ``truth_step_s`` spaces truth points
    (aligned to multiples of it in absolute time, at the first step on or after each).
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        start_ts: float,
        seed: int | None = None,
        single_share_fraction: float | None = None,
        truth_step_s: float = 60.0,
    ) -> None:
        if not (start_ts > 0 and math.isfinite(start_ts)):
            raise ValueError("start_ts must be positive Unix seconds")
        if truth_step_s <= 0:
            raise ValueError("truth_step_s must be positive")
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.world = build_world(scenario, self.seed)
        self.start_ts = float(start_ts)
        self.single_share_fraction = (scenario.single_share_fraction
                                      if single_share_fraction is None else single_share_fraction)
        if not 0.0 <= self.single_share_fraction <= 1.0:
            raise ValueError("single_share_fraction must be between 0 and 1")
        self.truth_step_s = truth_step_s
        self.rng = np.random.default_rng(self.seed)
        self._rollups = _rollups(self.world)
        net = scenario.network
        self._rho = math.exp(-scenario.step_s / net.noise_correlation)
        self._noise = self.rng.normal(0.0, net.noise_sigma, len(self.world.leaves))
        self._price = scenario.market.btc_usd
        self._next_price_t = self.start_ts
        self._last_truth_bucket: int | None = None
        self._run_tag = f"{self.seed:x}{int(self.start_ts):x}"
        #: Batches of lagging pools: (when they reach the pipeline, batch).
        self._held: list[tuple[float, dict[str, Any]]] = []
        self.chain = self._initial_chain()

    # -- chain --

    def _initial_chain(self) -> ChainState:
        chain = self.scenario.chain
        difficulty = chain.difficulty or (
            self.scenario.network.hashrate_ehs * 1e18 * TARGET_BLOCK_S / HASHES_PER_DIFFICULTY
        )
        bits = bits_for_difficulty(difficulty)
        start = int(self.start_ts)
        height = chain.start_height
        period_first = height - height % RETARGET_INTERVAL
        period_start = (None if period_first == height
                        else start - (height - 1 - period_first) * TARGET_BLOCK_S)
        state = ChainState(height=height, prev_hash=self._hash_below(target_from_bits(bits)),
                           bits=bits, work=work_from_bits(bits), last_time=start,
                           period_start_time=period_start)
        state.work_needed = float(self.rng.exponential()) * state.work
        return state

    def _hash_below(self, target: int) -> str:
        value = int.from_bytes(self.rng.bytes(32), "big") % target
        return f"{value:064x}"

    def _history(self, network_hs: float, pool_hashrate: FloatArray) -> list[dict[str, Any]]:
        """The chain's last ``history_blocks`` blocks before the start, mined by the start world
        at the start difficulty (no retarget inside), so a feed starts with history as real
        ones do and coverage is known from the first snapshot."""
        count = self.scenario.chain.history_blocks
        if count == 0 or network_hs <= 0:
            return []
        chain = self.chain
        gaps = self.rng.exponential(size=count) * chain.work / network_hs
        times = self.start_ts - np.cumsum(gaps)[::-1]
        first_height = chain.height - count
        period_first = chain.height - chain.height % RETARGET_INTERVAL
        if period_first < first_height:
            chain.period_start_time = (int(times[0])
                                       - (first_height - period_first) * TARGET_BLOCK_S)
        chain.height, chain.last_time = first_height, 0
        return [self._mine(float(t), pool_hashrate, retarget=False) for t in times]

    def _mine(self, t: float, pool_hashrate: FloatArray, retarget: bool = True
              ) -> dict[str, Any]:
        chain = self.chain
        height = chain.height
        block_time = max(int(t), chain.last_time)
        block_hash = self._hash_below(target_from_bits(chain.bits))
        finder = int(self.rng.choice(pool_hashrate.size, p=pool_hashrate / pool_hashrate.sum()))
        mean_fees = self.scenario.chain.fees_btc_mean * SAT_PER_BTC
        fees = int(self.rng.gamma(2.0, mean_fees / 2.0)) if mean_fees > 0 else 0
        event: dict[str, Any] = {
            "type": "block", "height": height, "hash": block_hash, "prev_hash": chain.prev_hash,
            "time": block_time, "bits": chain.bits,
            "coinbase_value_sat": block_subsidy_sat(height) + fees,
        }
        if finder < len(self.world.pool_names):
            event["pool"] = self.world.pool_names[finder]
        if height % RETARGET_INTERVAL == 0:
            chain.period_start_time = block_time
        chain.height, chain.prev_hash, chain.last_time = height + 1, block_hash, block_time
        if (retarget and self.scenario.chain.retarget and chain.height % RETARGET_INTERVAL == 0
                and chain.period_start_time is not None):
            chain.bits = retarget_bits(chain.bits, block_time - chain.period_start_time)
            chain.work = work_from_bits(chain.bits)
        chain.work_needed = float(self.rng.exponential()) * chain.work
        return event

    def _blocks(self, t: float, step: float, network_hs: float,
                pool_hashrate: FloatArray) -> list[dict[str, Any]]:
        if network_hs <= 0:
            return []
        available = network_hs * step
        cursor = t
        found = []
        while self.chain.work_needed <= available:
            cursor += self.chain.work_needed / network_hs
            available -= self.chain.work_needed
            found.append(self._mine(cursor, pool_hashrate))
        self.chain.work_needed -= available
        return found

    # -- shares --

    def _share_events(self, t: float, end: float, rates: FloatArray, step_index: int,
                      offset: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        world = self.world
        step = end - t
        lam = (rates[:, :, None] * world.class_weight[:, None, :] * step
               / (world.difficulties[None, None, :] * HASHES_PER_DIFFICULTY))
        counts = self.rng.poisson(lam)
        singles: list[dict[str, Any]] = []
        if self.single_share_fraction > 0:
            single_counts = self.rng.binomial(counts, self.single_share_fraction)
            counts = counts - single_counts
            singles = self._single_shares(t, step, rates, single_counts, step_index)
        n = counts.sum(axis=2)
        dsum = counts @ world.difficulties
        dsq = counts @ (world.difficulties**2)
        batches = []
        sampled = world.sampled_index
        hhi, accounts = account_concentration(world, offset, rates)
        for q, r in zip(*np.nonzero(n), strict=True):
            batches.append({
                "type": "share_batch", "start": t, "end": end,
                "pool": world.pool_slugs[sampled[q]], "region": world.sample_regions[r],
                "count": int(n[q, r]), "difficulty_sum": float(dsum[q, r]),
                "difficulty_sq_sum": float(dsq[q, r]),
                **account_fields(int(n[q, r]), float(dsum[q, r]), float(dsq[q, r]),
                                 float(hhi[q, r]), int(accounts[q, r])),
            })
        return singles, batches

    def _single_shares(self, t: float, step: float, rates: FloatArray, single_counts: IntArray,
                       step_index: int) -> list[dict[str, Any]]:
        world = self.world
        q_idx, r_idx, c_idx = np.nonzero(single_counts)
        if q_idx.size == 0:
            return []
        repeats = single_counts[q_idx, r_idx, c_idx]
        q, r, c = (np.repeat(a, repeats) for a in (q_idx, r_idx, c_idx))
        times = t + self.rng.random(q.size) * step
        workers = np.maximum(1.0, rates[q, r] * world.workers_per_hs[q, c])
        worker_index = np.floor(self.rng.random(q.size) * workers).astype(np.int64)
        sampled = world.sampled_index
        n_regions, n_classes = len(world.sample_regions), world.difficulties.size
        keys = ((sampled[q] * n_regions + r) * n_classes + c) * (1 << 32) + worker_index
        names = _worker_ids(keys.astype(np.int64))
        order = np.argsort(times, kind="stable")
        return [{
            "type": "share", "ts": float(times[i]), "pool": world.pool_slugs[sampled[q[i]]],
            "worker": names[i], "region": world.sample_regions[r[i]],
            "difficulty": float(world.difficulties[c[i]]), "accepted": True,
            "id": f"{self._run_tag}-{step_index}-{k}",
        } for k, i in enumerate(order)]

    def _release(self, batches: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """Batches that reach the pipeline by ``now``: lagging pools' wait ``feed_lag``."""
        world = self.world
        if not world.feed_lag.size or not world.feed_lag.any():
            return batches
        lag = dict(zip((world.pool_slugs[i] for i in world.sampled_index),
                       world.feed_lag.tolist(), strict=True))
        out = []
        for batch in batches:
            delay = lag.get(batch["pool"], 0.0)
            if delay > 0:
                self._held.append((batch["end"] + delay, batch))
            else:
                out.append(batch)
        due = [b for at, b in self._held if at <= now + 1e-9]
        self._held = [(at, b) for at, b in self._held if at > now + 1e-9]
        return out + due

    # -- market --

    def _prices(self, end: float) -> list[dict[str, Any]]:
        market = self.scenario.market
        out = []
        while self._next_price_t < end:
            out.append({"type": "price", "ts": self._next_price_t,
                        "btc_usd": round(self._price, 2), "source": "hashatlas-sim"})
            dt_days = market.interval / SECONDS_PER_DAY
            sigma = market.volatility_per_day
            self._price *= math.exp(sigma * math.sqrt(dt_days) * float(self.rng.normal())
                                    - sigma**2 * dt_days / 2)
            self._next_price_t += market.interval
        return out

    # -- truth --

    def header(self, duration_s: float) -> dict[str, Any]:
        """First line of the truth file: the scenario, its timing and its shocks."""
        world = self.world
        return {
            "type": "scenario", "name": self.scenario.name, "seed": self.seed,
            "start": self.start_ts, "end": self.start_ts + duration_s,
            "step_s": self.scenario.step_s, "truth_step_s": self.truth_step_s,
            "leaves": list(world.leaves), "regions": self._rollups.codes,
            "sampled_pools": [world.pool_slugs[i] for i in world.sampled_index],
            "shocks": [shock_timeline(s, self.start_ts) for s in self.scenario.shocks],
        }

    def _truth(self, t: float, offset: float, capacity: FloatArray, pool_hs: FloatArray,
               sample: FloatArray) -> dict[str, Any]:
        rollups, world = self._rollups, self.world
        network = float(capacity.sum())
        true_hs = _rolled(capacity, rollups.leaf_to_code, len(rollups.codes))
        sample_hs = _rolled(sample.sum(axis=0), rollups.sample_to_code, len(rollups.codes))
        sample_total = float(sample.sum())
        return {
            "type": "truth", "t": t, "network_hs": network,
            "coverage": float(pool_hs[world.sampled].sum() / network) if network else 0.0,
            "difficulty": DIFFICULTY_1_TARGET / target_from_bits(self.chain.bits),
            "height": self.chain.height, "btc_usd": self._price,
            "regions": {code: [float(hs / network) if network else 0.0, float(hs)]
                        for code, hs in zip(rollups.codes, true_hs, strict=True)},
            "sample_shares": {code: float(hs / sample_total) if sample_total else 0.0
                              for code, hs in zip(rollups.codes, sample_hs, strict=True)},
            "pool_shares": {slug: float(h / network) if network else 0.0
                            for slug, h in zip((*world.pool_slugs, UNKNOWN_POOL), pool_hs,
                                               strict=True)},
            "shocks": [s.name for s in self.scenario.shocks if shock_effect(s, offset) > 0],
        }

    # -- the walk --

    def steps(self, duration_s: float) -> Iterator[StepOutput]:
        """Every step from the start until ``duration_s`` simulated seconds have passed."""
        scenario, world = self.scenario, self.world
        step = scenario.step_s
        base = scenario.network.hashrate_ehs * 1e18 * world.base_share
        growth = scenario.network.growth_per_day
        sigma = scenario.network.noise_sigma
        n_steps = math.ceil(duration_s / step - 1e-9)
        for k in range(n_steps):
            offset = k * step
            t = self.start_ts + offset
            end = t + min(step, duration_s - offset)
            capacity = (base * math.exp(growth * offset / SECONDS_PER_DAY)
                        * world.capacity_factors(offset) * np.exp(self._noise))
            if world.pool_effects:
                cells = world.pool_cells(capacity, offset)
                capacity = cells.sum(axis=0)
                pool_hs = cells.sum(axis=1)
                rates = world.sample_rates(capacity, offset, cells)
            else:
                pool_hs = world.allocation @ capacity
                rates = world.sample_rates(capacity, offset)
            bucket = math.floor(t / self.truth_step_s)
            truth = None
            if self._last_truth_bucket is None or bucket > self._last_truth_bucket:
                self._last_truth_bucket = bucket
                truth = self._truth(t, offset, capacity, pool_hs, rates)
            singles, batches = self._share_events(t, end, rates, k, offset)
            batches = self._release(batches, end)
            history = self._history(float(capacity.sum()), pool_hs) if k == 0 else []
            timed = singles + self._blocks(t, end - t, float(capacity.sum()), pool_hs)
            timed += self._prices(end)
            timed.sort(key=_event_time)
            if sigma > 0:
                self._noise = (self._rho * self._noise + sigma * math.sqrt(1 - self._rho**2)
                               * self.rng.normal(size=self._noise.size))
            yield StepOutput(t=t, end=end, events=history + timed + batches, truth=truth)


def _event_time(event: dict[str, Any]) -> float:
    return float(event.get("ts", event.get("time", 0.0)))
