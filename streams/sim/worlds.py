"""Offline calibration over many simulated worlds: how often do the served intervals hold the truth?

``hashatlas evaluate --scenario FILE --worlds N`` runs N independent seeds of one scenario through
the code the workers run, without Kafka or Redis:

* share batches go, as JSON, through ``ShareBatchPartition.apply`` (the worker's per-partition
  state; pools spread over ``partitions`` partitions as Kafka keys would spread them), blocks
  through ``ChainPartition.apply``;
* at each check the partitions' ``partial`` at the leader's clock (newest event merged −
  ``settle_s``) is merged by ``merge_partials`` and ``build_snapshot`` makes the snapshot the API
  would serve; with ``detect_worlds`` the ``ShiftDetector`` sees a snapshot every history step.

The worlds come from a vectorised generator that follows the model of ``streams.sim.model``
(``build_world``: allocation, farms, pool shocks, VPN exits; the same vardiff classes and share
counts per (pool, region, class) and step), but generates only what the checks need: share
batches for ``feed_s`` before each check, and the chain over the whole run (plus
``chain.history_blocks`` before it). Two simplifications, both irrelevant to the intervals
measured: the difficulty stays at its start value (no retarget; the estimators divide work by
time), and each region's log-normal wander is drawn on a grid of ``grid_s`` and held within it.

What is measured per (world, check): the network nowcast against the true network hashrate at
the snapshot's ``as_of``; every region's ``share_ci95`` against its true share of the network and
``hashrate_ci95_hs`` against its true hashrate; per sampled pool, the windows' estimate of its
sampled hashrate against the true mean over the window (window-edge bias). Coverage is the part
of the checks whose interval held the truth; a region the truth has but the snapshot lacks counts
as a miss (``missing``). ``sample_bias_pp`` is how far the sampled pools' own regional mix is from
the network's: what no estimator that trusts the sample can remove.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from streams.core.blocks import (
    block_subsidy_sat,
    load_pool_directory,
    target_from_bits,
    work_from_bits,
)
from streams.core.regions import country_of
from streams.core.shifts import ShiftDetector, shift_params
from streams.core.snapshot import (
    EstimationConfig,
    MergedSample,
    SnapshotMemory,
    build_snapshot,
    detection_shares,
    merge_partials,
)
from streams.models.chain import COVERAGE_BLOCKS, ChainSummary
from streams.pipeline.state import ChainPartition, ShareBatchPartition
from streams.settings import Settings
from streams.sim.model import (
    HASHES_PER_DIFFICULTY,
    SECONDS_PER_DAY,
    TARGET_BLOCK_S,
    World,
    account_concentration,
    account_fields,
    bits_for_difficulty,
    build_world,
)
from streams.sim.scenario import Scenario

FloatArray = npt.NDArray[np.float64]
#: Start of world 0; world i starts ``WORLD_SPACING_S`` later, plus a random phase (all in the
#: past for thousands of worlds: block times may not run ahead of the wall clock).
BASE_START_TS = 1_641_000_000.0
WORLD_SPACING_S = 100_000.0
DEFAULT_CHECKS = 4
#: Longest span a detection run tracks (a snapshot per history step is costly).
MAX_TRACK_S = 12 * 3600.0
TRACK_MARGIN_S = 2 * 3600.0
NETWORK = "network"


def data_dir() -> Any:
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "data"


def default_config(settings: Settings) -> EstimationConfig:
    """The worker's estimation config (``streams.pipeline.estimation``), without Faust."""
    from streams.core.electricity import Method, load_electricity_prices, load_hardware
    from streams.pipeline.estimation import known_regions

    hardware = load_hardware(settings.hardware_file or data_dir() / "hardware.csv")
    default_price, prices = load_electricity_prices(
        settings.electricity_prices_file or data_dir() / "electricity_prices.yaml")
    method: Method = "1.2.0" if settings.electricity_method == "1.2.0" else "1.4.0"
    return EstimationConfig(
        headline_window_s=settings.headline_window_s, hardware=hardware,
        default_price_usd_kwh=default_price, prices_usd_kwh=prices, method=method,
        suspect_regions=settings.suspect_regions, known_regions=known_regions(settings),
    )


# ---- the pipeline without Kafka or Redis ------------------------------------------------------


class OfflinePipeline:
    """The worker's partition states and the leader's merge, fed directly."""

    def __init__(self, settings: Settings, config: EstimationConfig, partitions: int = 2,
                 chain: ChainPartition | None = None) -> None:
        self.settings = settings
        self.config = config
        self.shares = [ShareBatchPartition.restore(None, settings) for _ in range(partitions)]
        self.chain = chain or ChainPartition.restore(
            None, load_pool_directory(data_dir() / "pools-v2.json"))
        self.memory = SnapshotMemory()
        #: None (the default) leaves power, hashprice and threshold out of the snapshot: they are
        #: not evaluated here and cost most of build_snapshot.
        self.btc_usd: float | None = None
        self._summary: tuple[int, ChainSummary] = (-1, ChainSummary())

    def apply_batch(self, raw: bytes, partition: int) -> None:
        self.shares[partition % len(self.shares)].apply(raw)

    def apply_block(self, raw: bytes) -> None:
        self.chain.apply(raw)

    def clock(self) -> float:
        """The leader's clock: the newest event time merged."""
        return max((p.max_event_ts for p in self.shares), default=0.0)

    def merged(self, t_eval: float | None = None, windows_s: Sequence[float] | None = None,
               *, concentration: bool = True) -> MergedSample | None:
        """Every partition's partial at ``t_eval`` (default: clock − settle_s) over
        ``windows_s`` (default: the workers' windows), merged."""
        if t_eval is None:
            t_eval = self.clock() - self.settings.settle_s
        windows = list(windows_s or self.settings.windows_s)
        partials = [p.partial(t_eval, windows, concentration=concentration)
                    for p in self.shares if p.max_event_ts]
        return merge_partials(partials)

    def chain_summary(self) -> ChainSummary:
        """The chain summary the worker writes, rebuilt only when the chain changed."""
        blocks = len(self.chain.chain)
        if self._summary[0] != blocks:
            self._summary = (blocks, self.chain.summary(COVERAGE_BLOCKS))
        return self._summary[1]

    def snapshot(self, t_eval: float | None = None) -> tuple[dict[str, Any], MergedSample] | None:
        merged = self.merged(t_eval)
        if merged is None:
            return None
        snap = build_snapshot(merged, self.chain_summary(), self.btc_usd, self.config,
                              self.memory, published_at=merged.as_of, stale=False)
        return snap, merged

    def detection_step(self) -> tuple[float, dict[str, tuple[float, float]] | None] | None:
        """The history step and what the leader's detector would be fed there
        (``detection_shares``: the headline window only and no account concentration, which
        it does not read)."""
        merged = self.merged(windows_s=[self.config.headline_window_s], concentration=False)
        if merged is None:
            return None
        step = self.settings.history_step_s
        return ((merged.as_of // step) * step,
                detection_shares(merged, self.chain_summary(), self.config, self.memory))


# ---- the vectorised world ---------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One share batch as it reaches the pipeline."""

    emitted: float
    pool_index: int  # index among the sampled pools
    body: dict[str, Any]


@dataclass(frozen=True)
class CheckTruth:
    """The world at one check: truth at ``t`` and, per window, each sampled pool's mean."""

    t: float
    network_hs: float
    network_window_hs: float
    coverage: float
    shares: dict[str, float]
    hashrates: dict[str, float]
    sample_shares: dict[str, float]
    pool_window_hs: dict[float, dict[str, float]]
    #: Means over the headline window (what a windowed estimate estimates).
    window_shares: dict[str, float] = field(default_factory=dict)
    window_hashrates: dict[str, float] = field(default_factory=dict)
    #: The sampled pools' hashrate per region, mean over the headline window.
    window_sample_hs: dict[str, float] = field(default_factory=dict)


class FastWorld:
    """One seed of a scenario, generated only where the checks look (see the module docstring)."""

    def __init__(self, scenario: Scenario, seed: int, start_ts: float,
                 grid_s: float | None = None) -> None:
        self.scenario = scenario
        self.seed = seed
        self.start_ts = start_ts
        self.world: World = build_world(scenario, seed)
        self.rng = np.random.default_rng([seed, 0x5EED])
        world = self.world
        self.step = scenario.step_s
        self.grid_s = grid_s or max(self.step, 60.0 if scenario.duration <= 2 * SECONDS_PER_DAY
                                    else 300.0)
        net = scenario.network
        self.base = net.hashrate_ehs * 1e18 * world.base_share
        points = math.ceil(scenario.duration / self.grid_s) + 2
        rho = math.exp(-self.grid_s / net.noise_correlation)
        noise = np.zeros((points, len(world.leaves)))
        noise[0] = self.rng.normal(0.0, net.noise_sigma, len(world.leaves))
        shocks = self.rng.normal(0.0, net.noise_sigma * math.sqrt(1 - rho**2), noise.shape)
        for k in range(1, points):
            noise[k] = rho * noise[k - 1] + shocks[k]
        self.noise = np.exp(noise)
        self.sampled = world.sampled_index
        self.sampled_slugs = [world.pool_slugs[i] for i in self.sampled]
        self.codes = list(dict.fromkeys([*world.sample_regions,
                                         *(country_of(c) for c in world.sample_regions)]))
        self._leaf_roll = _roll_matrix(world.leaves, self.codes)
        self._sample_roll = _roll_matrix(world.sample_regions, self.codes)
        difficulty = scenario.chain.difficulty or (
            net.hashrate_ehs * 1e18 * TARGET_BLOCK_S / HASHES_PER_DIFFICULTY)
        self.bits = bits_for_difficulty(difficulty)
        self.work = float(work_from_bits(self.bits))
        self.target = target_from_bits(self.bits)

    # -- hashrate --

    def capacity(self, offset: float) -> FloatArray:
        scenario, world = self.scenario, self.world
        cell = min(max(int(offset // self.grid_s), 0), self.noise.shape[0] - 1)
        return (self.base * math.exp(scenario.network.growth_per_day * offset / SECONDS_PER_DAY)
                * world.capacity_factors(offset) * self.noise[cell])

    def state(self, offset: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(leaf capacity, hashrate per allocation row, sampled rates [q, sample region])."""
        world = self.world
        capacity = self.capacity(offset)
        if world.pool_effects:
            cells = world.pool_cells(capacity, offset)
            capacity = cells.sum(axis=0)
            return capacity, cells.sum(axis=1), world.sample_rates(capacity, offset, cells)
        return capacity, world.allocation @ capacity, world.sample_rates(capacity, offset)

    # -- blocks --

    def blocks(self, until_offset: float) -> list[dict[str, Any]]:
        """The chain from ``history_blocks`` before the start to ``until_offset``, oldest
        first, as ``block`` events (difficulty fixed, finder drawn by pool hashrate)."""
        scenario, rng = self.scenario, self.rng
        grid = np.arange(0.0, until_offset + self.grid_s, self.grid_s)
        states = [self.state(float(o)) for o in grid]
        network = np.array([s[0].sum() for s in states])
        pools = np.array([s[1] for s in states])
        times: list[FloatArray] = []
        rows: list[npt.NDArray[np.int64]] = []
        history = scenario.chain.history_blocks
        if history:
            gaps = rng.exponential(size=history) * self.work / network[0]
            times.append(self.start_ts - np.cumsum(gaps)[::-1])
            rows.append(_draw_rows(rng, np.repeat(pools[:1], history, axis=0)))
        cumulative = np.concatenate(([0.0], np.cumsum(network * self.grid_s)))
        edges = np.concatenate((grid, [grid[-1] + self.grid_s]))
        expected = cumulative[-1] / self.work
        draws = rng.exponential(size=int(expected + 10 * math.sqrt(expected + 1) + 10))
        arrivals = np.cumsum(draws) * self.work
        arrivals = arrivals[arrivals < cumulative[-1]]
        run_times = np.interp(arrivals, cumulative, edges)
        run_times = run_times[run_times <= until_offset]
        cells = np.minimum((run_times // self.grid_s).astype(np.int64), grid.size - 1)
        times.append(self.start_ts + run_times)
        rows.append(_draw_rows(rng, pools[cells]))
        all_times = np.concatenate(times)
        all_rows = np.concatenate(rows)
        height = scenario.chain.start_height - history
        events = []
        prev = f"{int.from_bytes(rng.bytes(32), 'big') % self.target:064x}"
        last = 0
        names = self.world.pool_names
        for t, row in zip(all_times.tolist(), all_rows.tolist(), strict=True):
            block_hash = f"{int.from_bytes(rng.bytes(32), 'big') % self.target:064x}"
            last = max(int(t), last)
            event: dict[str, Any] = {
                "type": "block", "height": height, "hash": block_hash, "prev_hash": prev,
                "time": last, "bits": self.bits, "coinbase_value_sat": block_subsidy_sat(height),
            }
            if row < len(names):
                event["pool"] = names[row]
            events.append(event)
            prev, height = block_hash, height + 1
        return events

    # -- shares --

    def batches(self, end_offset: float, span_s: float
                ) -> tuple[list[Batch], FloatArray, FloatArray, FloatArray]:
        """Share batches of the steps in [end − span, end], in the order they reach the
        pipeline (only those emitted by ``end``: lagging pools' last ones are missing); also
        the step starts, the sampled rates per step [k, q, r] and leaf capacity per step."""
        world, rng, step = self.world, self.rng, self.step
        k_end = round(end_offset / step)
        k_first = max(0, k_end - math.ceil(span_s / step))
        starts = np.arange(k_first, k_end) * step
        states = [self.state(float(o)) for o in starts]
        rates = np.array([s[2] for s in states])
        network = np.array([s[0] for s in states])
        lam = (rates[:, :, :, None] * world.class_weight[None, :, None, :] * step
               / (world.difficulties[None, None, None, :] * HASHES_PER_DIFFICULTY))
        counts = rng.poisson(lam)
        n = counts.sum(axis=3)
        dsum = counts @ world.difficulties
        dsq = counts @ (world.difficulties**2)
        lag = world.feed_lag if world.feed_lag.size else np.zeros(len(self.sampled))
        end_ts = self.start_ts + end_offset
        hhi, accounts = account_concentration(world, end_offset, rates[-1] if len(rates) else
                                              np.zeros((len(self.sampled),
                                                        len(world.sample_regions))))
        out = []
        for k, q, r in zip(*np.nonzero(n), strict=True):
            t = self.start_ts + float(starts[k])
            emitted = t + step + float(lag[q])
            if emitted > end_ts + 1e-6:
                continue
            out.append(Batch(emitted, int(q), {
                "type": "share_batch", "start": t, "end": t + step,
                "pool": self.sampled_slugs[q], "region": world.sample_regions[r],
                "count": int(n[k, q, r]), "difficulty_sum": float(dsum[k, q, r]),
                "difficulty_sq_sum": float(dsq[k, q, r]),
                **account_fields(int(n[k, q, r]), float(dsum[k, q, r]), float(dsq[k, q, r]),
                                 float(hhi[q, r]), int(accounts[q, r])),
            }))
        out.sort(key=lambda b: b.emitted)
        return (out, (self.start_ts + starts).astype(np.float64), rates.astype(np.float64),
                network.astype(np.float64))

    def truth(self, t: float, windows: Sequence[float], step_starts: FloatArray,
              rates: FloatArray, capacities: FloatArray) -> CheckTruth:
        """Truth at ``t``; window means over ``windows`` (the first: the headline window)."""
        capacity, pool_hs, sample = self.state(t - self.start_ts)
        total = float(capacity.sum())
        true_hs = self._leaf_roll @ capacity
        sample_hs = self._sample_roll @ sample.sum(axis=0)
        sample_total = float(sample.sum())
        by_pool = rates.sum(axis=2)  # [k, q]
        rolled = capacities @ self._leaf_roll.T  # [k, code]
        sampled = rates.sum(axis=1) @ self._sample_roll.T  # [k, code]
        network = capacities.sum(axis=1)
        pool_window: dict[float, dict[str, float]] = {}
        window_sample: dict[str, float] = {}
        window_shares: dict[str, float] = {}
        window_hashrates: dict[str, float] = {}
        network_window = total
        for window in windows:
            overlap = np.clip(np.minimum(step_starts + self.step, t)
                              - np.maximum(step_starts, t - window), 0.0, None)
            weight = overlap / max(float(overlap.sum()), 1e-9)
            pool_window[window] = dict(zip(self.sampled_slugs, (weight @ by_pool).tolist(),
                                           strict=True))
            if window == windows[0]:
                network_window = float(weight @ network)
                window_hashrates = dict(zip(self.codes, (weight @ rolled).tolist(), strict=True))
                window_shares = dict(zip(self.codes, (weight @ (rolled / network[:, None]))
                                         .tolist(), strict=True))
                window_sample = dict(zip(self.codes, (weight @ sampled).tolist(), strict=True))
        return CheckTruth(
            t=t, network_hs=total, network_window_hs=network_window,
            coverage=float(pool_hs[self.sampled].sum() / total) if total else 0.0,
            shares={c: float(h / total) for c, h in zip(self.codes, true_hs, strict=True)},
            hashrates={c: float(h) for c, h in zip(self.codes, true_hs, strict=True)},
            sample_shares={c: float(h / sample_total) if sample_total else 0.0
                           for c, h in zip(self.codes, sample_hs, strict=True)},
            pool_window_hs=pool_window,
            window_shares=window_shares, window_hashrates=window_hashrates,
            window_sample_hs=window_sample,
        )

    def mean_network(self, t_from: float, t_to: float, points: int = 200) -> float:
        """The true network hashrate averaged over [t_from, t_to] (absolute times)."""
        offsets = np.linspace(t_from, t_to, points) - self.start_ts
        return float(np.mean([self.state(float(o))[0].sum() for o in offsets]))


def _roll_matrix(regions: Sequence[str], codes: Sequence[str]) -> FloatArray:
    """M[code, region] = 1 when the region is the code or lies in the code's country."""
    matrix = np.zeros((len(codes), len(regions)))
    for j, region in enumerate(regions):
        matrix[codes.index(region), j] = 1.0
        country = country_of(region)
        if country != region:
            matrix[codes.index(country), j] = 1.0
    return matrix


def _draw_rows(rng: np.random.Generator, weights: FloatArray) -> npt.NDArray[np.int64]:
    """One row index per line of ``weights`` (each line: hashrate per allocation row)."""
    if weights.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    cumulative = np.cumsum(weights, axis=1)
    cumulative /= cumulative[:, -1:]
    u = rng.random(int(weights.shape[0]))[:, None]
    return np.minimum((u > cumulative).sum(axis=1), weights.shape[1] - 1).astype(np.int64)


def encode(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body)


# ---- one world --------------------------------------------------------------------------------


@dataclass
class Record:
    """One interval (or estimate) of one check against the truth."""

    world: int
    check: float  # offset of the check from the start, s
    series: str  # network, a region code, or a sampled pool (window bias)
    kind: str  # network | share | hashrate | window_60 | window_300 | coverage
    estimate: float | None
    lower: float | None
    upper: float | None
    truth: float
    sample_truth: float | None = None
    window_truth: float | None = None  # the truth's mean over the headline window
    lag: bool = False  # a lagging pool (window records)
    #: False: the snapshot lists the region from its reference list, no sampled share seen.
    observed: bool = True


def check_offsets(scenario: Scenario, checks: int = DEFAULT_CHECKS) -> list[float]:
    """The scenario's evaluation checks, or ``checks`` evenly spaced over its second half."""
    if scenario.evaluation is not None:
        return sorted(scenario.evaluation.checks)
    d = scenario.duration
    return [d / 2 + d / 2 * (i + 1) / checks for i in range(checks)]


def run_world(scenario: Scenario, index: int, seed: int, settings: Settings,
              config: EstimationConfig, *, checks: Sequence[float], partitions: int = 2,
              feed_s: float | None = None) -> list[Record]:
    """Every check of one world, as records."""
    rng = np.random.default_rng([seed, index, 0xC0DE])
    start_ts = BASE_START_TS + index * WORLD_SPACING_S + float(rng.random()) * scenario.step_s
    world = FastWorld(scenario, seed=seed * 100_003 + index, start_ts=start_ts)
    head = settings.headline_window_s
    windows = sorted({head, *[w for w in settings.windows_s if w <= head]})
    feed_s = feed_s or head + 2 * scenario.step_s + max(
        [float(x) for x in world.world.feed_lag] + [0.0])
    lagging = {world.sampled_slugs[q] for q, lag in enumerate(world.world.feed_lag) if lag > 0}
    blocks = world.blocks(max(checks))
    chain = ChainPartition.restore(None, load_pool_directory(data_dir() / "pools-v2.json"))
    position = 0
    records: list[Record] = []
    for offset in sorted(checks):
        end_ts = start_ts + offset
        while position < len(blocks) and blocks[position]["time"] <= end_ts:
            chain.apply(encode(blocks[position]))
            position += 1
        pipeline = OfflinePipeline(settings, config, partitions, chain=chain)
        batches, step_starts, rates, network = world.batches(offset, feed_s)
        for batch in batches:
            pipeline.apply_batch(encode(batch.body), batch.pool_index)
        made = pipeline.snapshot()
        if made is None:
            continue
        snap, merged = made
        truth = world.truth(float(snap["as_of"]), [head, *windows], step_starts, rates, network)
        records.extend(snapshot_records(index, offset, snap, merged, truth, lagging))
        summary = pipeline._summary[1]
        rate, tip = summary.rates.get(config.block_window), summary.tip
        if rate is not None and tip is not None:  # GetNetworkHashPS over its span: its mean
            records.append(Record(index, offset, NETWORK, "block_hashrate", rate.hashrate_hs,
                                  rate.lower_hs, rate.upper_hs,
                                  world.mean_network(tip.time - rate.span_s, tip.time)))
    return records


def snapshot_records(world: int, check: float, snap: Mapping[str, Any], merged: MergedSample,
                     truth: CheckTruth, lagging: Iterable[str] = ()) -> list[Record]:
    """Records of one snapshot against its truth."""
    out = []
    net = snap["network"]
    ci = net.get("hashrate_ci95_hs") or [None, None]
    out.append(Record(world, check, NETWORK, "network", net.get("hashrate_hs"), ci[0], ci[1],
                      truth.network_hs, window_truth=truth.network_window_hs))
    cov = net.get("coverage_ci95") or [None, None]
    out.append(Record(world, check, NETWORK, "coverage", net.get("coverage"), cov[0], cov[1],
                      truth.coverage))
    served = {e["region"]: e for e in [*snap["regions"], *snap["subdivisions"]]}
    for code, share in truth.shares.items():
        entry = served.get(code)
        if entry is None and share <= 0:
            continue
        if entry is None and net.get("unlisted_region_share_max") is not None:
            out.append(Record(world, check, code, "unlisted_share", None, 0.0,
                              float(net["unlisted_region_share_max"]), share))
        entry = entry or {}
        sci = entry.get("share_ci95") or [None, None]
        hci = entry.get("hashrate_ci95_hs") or [None, None]
        out.append(Record(world, check, code, "share", entry.get("share"), sci[0], sci[1],
                          share, truth.sample_shares.get(code),
                          window_truth=truth.window_shares.get(code),
                          observed=bool(entry.get("observed", True))))
        out.append(Record(world, check, code, "hashrate", entry.get("hashrate_hs"), hci[0],
                          hci[1], truth.hashrates[code],
                          window_truth=truth.window_hashrates.get(code)))
        sample_hs = truth.window_sample_hs.get(code, 0.0)
        if sample_hs > 0:  # the region's own sample: truth = its sampled hashrate (window mean)
            ssi = entry.get("sample_hashrate_ci95_hs") or [None, None]
            out.append(Record(world, check, code, "sample_hashrate",
                              entry.get("sample_hashrate_hs"), ssi[0], ssi[1], sample_hs))
    lagging = set(lagging)
    for window, by_pool in truth.pool_window_hs.items():
        rows = merged.windows.get(window, {})
        estimate: dict[str, float] = {}
        for (pool, _), totals in rows.items():
            if totals.effective_seconds > 0:
                estimate[pool] = estimate.get(pool, 0.0) + totals.hashrate_hs
        for pool, true_hs in by_pool.items():
            if true_hs > 0:
                out.append(Record(world, check, pool, f"window_{int(window)}",
                                  estimate.get(pool, 0.0), None, None, true_hs,
                                  lag=pool in lagging))
    return out


# ---- aggregation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Coverage, width and error of one series' intervals over worlds and checks."""

    series: str
    kind: str
    n: int
    missing: int
    coverage: float | None
    mean_truth: float
    bias: float | None  # share: pp; hashrate, network: relative
    mae: float | None
    mean_half_width: float | None  # same units as bias
    sample_bias: float | None = None  # share: sampled pools' mix − network's, pp
    #: Coverage of the truth's mean over the headline window instead of its value at as_of.
    window_coverage: float | None = None
    #: Median full width of the intervals (upper − lower; relative to the truth for hashrates,
    #: pp for shares): the typical interval a user is served, unmoved by a few very wide ones.
    median_width: float | None = None


def coverage_of(lower: Sequence[float | None], upper: Sequence[float | None],
                truth: Sequence[float | None]) -> float | None:
    """Fraction of intervals that hold their truth; an absent interval is a miss."""
    if not truth:
        return None
    hits = [lo is not None and hi is not None and t is not None and lo <= t <= hi
            for lo, hi, t in zip(lower, upper, truth, strict=True)]
    return float(np.mean(hits))


def calibrate(records: Sequence[Record], kind: str, series: str,
              check: float | None = None) -> Calibration:
    rows = [r for r in records if r.kind == kind and r.series == series
            and (check is None or r.check == check)]
    truth = [r.truth for r in rows]
    missing = sum(1 for r in rows if r.estimate is None)
    known = [r for r in rows if r.estimate is not None]
    share_like = kind in ("share", "coverage")
    scale = 100.0 if share_like else 1.0

    def err(r: Record) -> float:
        assert r.estimate is not None
        if share_like:
            return (r.estimate - r.truth) * scale
        return r.estimate / r.truth - 1.0 if r.truth else math.nan

    def half(r: Record) -> float:
        assert r.lower is not None and r.upper is not None
        if share_like:
            return (r.upper - r.lower) / 2 * scale
        return (r.upper - r.lower) / 2 / r.truth if r.truth else math.nan

    errors = np.array([err(r) for r in known]) if known else np.empty(0)
    widths = np.array([half(r) for r in known if r.lower is not None and r.upper is not None])
    sample = [(r.sample_truth - r.truth) * scale for r in rows if r.sample_truth is not None]
    return Calibration(
        series=series, kind=kind, n=len(rows), missing=missing,
        coverage=(coverage_of([r.lower for r in rows], [r.upper for r in rows], truth)
                  if kind not in ("window_60", "window_300") else None),
        mean_truth=float(np.mean(truth)) if truth else math.nan,
        bias=float(np.nanmean(errors)) if errors.size else None,
        mae=float(np.nanmean(np.abs(errors))) if errors.size else None,
        mean_half_width=float(np.nanmean(widths)) if widths.size else None,
        sample_bias=float(np.mean(sample)) if sample and kind == "share" else None,
        window_coverage=(coverage_of([r.lower for r in rows], [r.upper for r in rows],
                                     [r.window_truth for r in rows])
                         if rows and all(r.window_truth is not None for r in rows) else None),
        median_width=float(np.nanmedian(widths)) * 2 if widths.size else None,
    )


@dataclass
class WorldsReport:
    scenario: str
    worlds: int
    seed: int
    checks: list[float]
    network: list[Calibration]  # overall, then per check
    coverage: Calibration
    shares: list[Calibration]
    hashrates: list[Calibration]
    windows: list[Calibration]  # per window × (lagging, other pools)
    pooled: dict[str, float | None]  # all countries / all subdivisions pooled
    sample_hashrates: list[Calibration] = field(default_factory=list)
    block_hashrate: Calibration | None = None
    detection: dict[str, Any] | None = None
    #: Regional share intervals by size band of the true share (``share_bands``).
    share_bands: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def summarise(scenario: Scenario, records: Sequence[Record], worlds: int, seed: int,
              checks: Sequence[float]) -> WorldsReport:
    network = [calibrate(records, "network", NETWORK)]
    network += [calibrate(records, "network", NETWORK, c) for c in checks]
    codes = sorted({r.series for r in records if r.kind == "share"},
                   key=lambda c: -np.mean([r.truth for r in records
                                           if r.kind == "share" and r.series == c]))
    shares = [calibrate(records, "share", c) for c in codes]
    hashrates = [calibrate(records, "hashrate", c) for c in codes]
    windows = []
    for kind in sorted({r.kind for r in records if r.kind.startswith("window_")},
                       key=lambda k: int(k.split("_")[1])):
        for lag in (False, True):
            label = "lagging pools" if lag else "other pools"
            rows = [replace(r, series=label) for r in records if r.kind == kind and r.lag == lag]
            if rows:
                windows.append(calibrate(rows, kind, label))
    pooled: dict[str, float | None] = {}
    for label, sub in (("countries", False), ("subdivisions", True)):
        for kind in ("share", "hashrate"):
            rows = [r for r in records if r.kind == kind and ("-" in r.series) == sub]
            pooled[f"{label}_{kind}"] = coverage_of([r.lower for r in rows],
                                                    [r.upper for r in rows],
                                                    [r.truth for r in rows])
    for label, sub in (("countries", False), ("subdivisions", True)):
        rows = [r for r in records if r.kind == "sample_hashrate" and ("-" in r.series) == sub]
        pooled[f"{label}_sample_hashrate"] = coverage_of(
            [r.lower for r in rows], [r.upper for r in rows], [r.truth for r in rows])
    blocks = [r for r in records if r.kind == "block_hashrate"]
    report = WorldsReport(scenario=scenario.name, worlds=worlds, seed=seed, checks=list(checks),
                        network=network, coverage=calibrate(records, "coverage", NETWORK),
                        shares=shares, hashrates=hashrates, windows=windows, pooled=pooled,
                        sample_hashrates=[calibrate(records, "sample_hashrate", c) for c in codes],
                        block_hashrate=(calibrate(records, "block_hashrate", NETWORK)
                                        if blocks else None))
    report.share_bands = share_bands(records)
    return report


#: Bands of a region's true network share for ``share_bands`` (lower inclusive).
SHARE_BANDS = ((0.0, 0.01), (0.01, 0.05), (0.05, 0.15), (0.15, 0.40), (0.01, 0.40))


def share_bands(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Coverage of ``share_ci95`` and its median half-width per band of true share, over
    countries and subdivisions together: ``coverage`` counts a region the snapshot lacks as a
    miss, ``served_coverage`` only the regions it serves, ``unlisted_coverage`` counts a missing
    region as held when its share is within the snapshot's ``unlisted_region_share_max``;
    ``unobserved*`` describe the records served by a listed-but-unobserved entry (counted in
    ``coverage`` like any other)."""
    out = []
    for low, high in SHARE_BANDS:
        rows = [r for r in records if r.kind == "share" and low <= r.truth < high]
        served = [(r.lower, r.upper, r.truth) for r in rows
                  if r.lower is not None and r.upper is not None]
        held = sum(1 for lower, upper, truth in served if lower <= truth <= upper)
        unlisted = sum(1 for r in records if r.kind == "unlisted_share" and low <= r.truth < high
                       and r.upper is not None and r.truth <= r.upper)
        halves = [(upper - lower) / 2 for lower, upper, _ in served]
        out.append({**_unobserved_band(rows),
            "band": [low, high], "n": len(rows), "missing": len(rows) - len(served),
            "coverage": held / len(rows) if rows else None,
            "served_coverage": held / len(served) if served else None,
            "unlisted_coverage": (held + unlisted) / len(rows) if rows else None,
            "median_half_width": float(np.median(halves)) if halves else None,
        })
    return out


def _unobserved_band(rows: Sequence[Record]) -> dict[str, Any]:
    """Of a band's share records, those of regions listed unobserved (counted in the band's
    coverage like any other): how many, their coverage and median half-width."""
    unseen = [(r.lower, r.upper, r.truth) for r in rows
              if not r.observed and r.lower is not None and r.upper is not None]
    held = sum(1 for lower, upper, truth in unseen if lower <= truth <= upper)
    halves = [(upper - lower) / 2 for lower, upper, _ in unseen]
    return {"unobserved": len(unseen),
            "unobserved_coverage": held / len(unseen) if unseen else None,
            "unobserved_median_half_width": float(np.median(halves)) if halves else None}


def evaluate_worlds(scenario: Scenario, worlds: int, *, seed: int = 1,
                    settings: Settings | None = None, checks: Sequence[float] | None = None,
                    partitions: int = 2, detect_worlds: int = 0, detect_first: int = 0,
                    max_track_s: float = MAX_TRACK_S,
                    lead_s: float = TRACK_MARGIN_S) -> WorldsReport:
    """Run ``worlds`` seeds of ``scenario`` and summarise the calibration."""
    import time

    started = time.perf_counter()
    settings = settings or Settings()
    config = default_config(settings)
    offsets = list(checks) if checks else check_offsets(scenario)
    records: list[Record] = []
    for index in range(worlds):
        records.extend(run_world(scenario, index, seed, settings, config, checks=offsets,
                                 partitions=partitions))
    report = summarise(scenario, records, worlds, seed, offsets)
    if detect_worlds:
        report.detection = detection_over_worlds(scenario, detect_worlds, seed, settings, config,
                                                 partitions=partitions, first=detect_first,
                                                 max_track_s=max_track_s, lead_s=lead_s)
    report.seconds = time.perf_counter() - started
    return report


# ---- shift detection over a tracked run -------------------------------------------------------




def track_span(scenario: Scenario, max_track_s: float = MAX_TRACK_S,
               lead_s: float = TRACK_MARGIN_S) -> tuple[float, float]:
    """Offsets a detection run tracks: the shocks' onsets to full effect (and recovery), from
    ``lead_s`` before (the detector's cold start) to ``TRACK_MARGIN_S`` after, at most
    ``max_track_s``; without shocks the last ``max_track_s`` / 2 of the scenario."""
    duration = scenario.duration
    if not scenario.shocks:
        return max(0.0, duration - max_track_s / 2), duration
    begin = min(s.at for s in scenario.shocks)
    end = max(s.at + s.fall_s + (s.hold or 0.0) + (s.recovery_s or 0.0)
              for s in scenario.shocks)
    first = max(0.0, begin - lead_s)
    last = min(duration, end + TRACK_MARGIN_S, first + max_track_s)
    return first, last


def track_world(scenario: Scenario, index: int, seed: int, settings: Settings,
                config: EstimationConfig, *, partitions: int = 2,
                batch_s: float = 60.0, max_track_s: float = MAX_TRACK_S,
                lead_s: float = TRACK_MARGIN_S) -> dict[str, Any]:
    """One world tracked over ``track_span`` with the ``ShiftDetector`` fed every history step
    what the leader would feed it (``OfflinePipeline.detection_step``); share batches of
    ``batch_s`` (coarser than the scenario's step, to keep the run short). Returns the alerts
    and the truth series."""
    from streams.sim import evaluate as ev
    from streams.sim.model import shock_timeline

    rng = np.random.default_rng([seed, index, 0xDE7])
    start_ts = BASE_START_TS + index * WORLD_SPACING_S + float(rng.random()) * batch_s
    coarse = scenario.model_copy(update={"step_s": batch_s})
    world = FastWorld(coarse, seed=seed * 100_003 + index, start_ts=start_ts)
    first, last = track_span(scenario, max_track_s, lead_s)
    blocks = world.blocks(last)
    pipeline = OfflinePipeline(settings, config, partitions)
    detector = ShiftDetector(shift_params(settings.shift_min_subdivision_share))
    step = settings.history_step_s
    position = 0
    alerts: list[dict[str, Any]] = []
    t_rows: list[float] = []
    capacities: list[FloatArray] = []
    last_step = -math.inf
    offset = first + step
    while offset <= last + 1e-9:
        end_ts = start_ts + offset
        while position < len(blocks) and blocks[position]["time"] <= end_ts:
            pipeline.apply_block(encode(blocks[position]))
            position += 1
        for batch in world.batches(offset, step)[0]:
            pipeline.apply_batch(encode(batch.body), batch.pool_index)
        made = pipeline.detection_step()
        if made is not None:
            step_t, fed = made
            if fed is not None and step_t > last_step:  # the leader: once per new step
                alerts.extend(detector.update(step_t, fed))
                last_step = step_t
            t_rows.append(end_ts)
            capacities.append(world.state(offset)[0])
        offset += step
    header = {"type": "scenario", "name": scenario.name, "start": start_ts + first,
              "end": start_ts + last,
              "shocks": [shock_timeline(s, start_ts) for s in scenario.shocks]}
    capacity = np.array(capacities)
    network = capacity.sum(axis=1)
    rolled = capacity @ world._leaf_roll.T / network[:, None]
    shares = {c: rolled[:, j] for j, c in enumerate(world.codes)}
    truth = ev.Truth(header=header, t=np.array(t_rows), network_hs=network,
                     shares=shares, hashrates={c: s * network for c, s in shares.items()},
                     sample_shares=shares)
    return {"truth": truth, "alerts": alerts}


def detection_over_worlds(scenario: Scenario, worlds: int, seed: int, settings: Settings,
                          config: EstimationConfig, *, partitions: int = 2, first: int = 0,
                          max_track_s: float = MAX_TRACK_S,
                          lead_s: float = TRACK_MARGIN_S) -> dict[str, Any]:
    """Detection delay, misses and false alarms of the ShiftDetector over tracked worlds
    ``first`` … ``first + worlds − 1`` (a long run split into parts gives the same worlds); per
    shock also the delays on the shocked region itself (``by_region``: subdivisions too), and
    the mirror effects the alerts labelled (not alerts of their own, not false alarms)."""
    from streams.sim import evaluate as ev

    delays: dict[str, list[float]] = {}
    status: dict[str, dict[str, int]] = {}
    by_region: dict[str, dict[str, list[float | None]]] = {}
    false_alarms = 0
    weeks = 0.0
    mirrors: dict[str, int] = {}
    for index in range(first, first + worlds):
        run = track_world(scenario, index, seed, settings, config, partitions=partitions,
                          max_track_s=max_track_s, lead_s=lead_s)
        for shock in run["truth"].shocks:
            entry = by_region.setdefault(shock["name"], {"onset": []})
            onset, recovery = region_delays(shock, run["alerts"])
            entry["onset"].append(onset)
            if shock.get("recovery_start") is not None:  # a shock that comes back
                entry.setdefault("recovery", []).append(recovery)
        score = ev.score_alerts(run["truth"], run["alerts"])
        for shock in score.shocks:
            status.setdefault(shock.shock, {})
            status[shock.shock][shock.status] = status[shock.shock].get(shock.status, 0) + 1
            if shock.delay_s is not None:
                delays.setdefault(shock.shock, []).append(shock.delay_s)
        false_alarms += score.false_alarms
        weeks += score.evaluated_weeks
        for code in labelled_mirrors(run["alerts"]):
            mirrors[code] = mirrors.get(code, 0) + 1
    return {
        "worlds": worlds,
        "first_world": first,
        "shocks": {name: {"status": counts,
                          "median_delay_min": (float(np.median(delays[name])) / 60.0
                                               if delays.get(name) else None)}
                   for name, counts in status.items()},
        "by_region": {name: {phase: delay_summary(values) for phase, values in entry.items()}
                      for name, entry in by_region.items()},
        "false_alarms": false_alarms,
        "false_alarms_per_week": false_alarms / weeks if weeks > 0 else None,
        "evaluated_weeks": weeks,
        "mirrors_labelled": mirrors,
    }


def delay_summary(values: Sequence[float | None]) -> dict[str, Any]:
    """Runs, catches and the delays (min): median, p90, max, and each run's (None: missed)."""
    found = np.array([v for v in values if v is not None]) / 60.0
    return {"runs": len(values), "caught": int(found.size),
            "median_min": float(np.median(found)) if found.size else None,
            "p90_min": float(np.percentile(found, 90)) if found.size else None,
            "max_min": float(found.max()) if found.size else None,
            "delays_min": [None if v is None else v / 60.0 for v in values]}


def labelled_mirrors(alerts: Sequence[Mapping[str, Any]]) -> set[str]:
    """The regions the alerts of one run listed as mirror effects of their own shift."""
    return {str(m) for a in alerts for m in a.get("mirrors") or ()}


def region_delays(shock: Mapping[str, Any], alerts: Sequence[Mapping[str, Any]]
                  ) -> tuple[float | None, float | None]:
    """Seconds from a shock's onset to the first alert on its own region (country or
    subdivision) in its direction, and from its recovery's start to the first sign of it (that
    alert resolving "recovered", or an alert the other way); None when none came."""
    region, direction = shock.get("region"), shock.get("direction")
    if region is None or direction not in ("up", "down"):
        return None, None
    onset = float(shock["onset"])
    fired = [a for a in alerts if a["region"] == region and a["state"] == "firing"
             and a["direction"] == direction and a["detected_at"] >= onset]
    first = min((a["detected_at"] for a in fired), default=None)
    back = shock.get("recovery_start")
    if back is None:
        return (None if first is None else first - onset), None
    signs = [a["resolved_at"] for a in alerts if a["region"] == region
             and a["state"] == "resolved" and a.get("resolution") == "recovered"
             and a["resolved_at"] >= back]
    signs += [a["detected_at"] for a in alerts if a["region"] == region
              and a["state"] == "firing" and a["direction"] != direction
              and a["detected_at"] >= back]
    return (None if first is None else first - onset), (
        min(signs) - back if signs else None)


# ---- output -----------------------------------------------------------------------------------


def _f(value: float | None, fmt: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, fmt)


def _network_lines(report: WorldsReport) -> list[str]:
    """The network nowcast's calibration per check, coverage ĉ and the block hashrate."""
    lines: list[str] = []
    lines.append("")
    lines.append("network nowcast (truth: network hashrate at as_of)")
    lines.append(f"  {'check':>10s} {'n':>5s} {'cover95':>8s} {'cov win':>8s} {'bias':>8s} "
                 f"{'MAE':>7s} {'±half':>7s} {'med wd':>7s}")
    labels = ["all", *[f"{c / 3600:g} h" for c in report.checks]]
    for label, cal in zip(labels, report.network, strict=True):
        lines.append(f"  {label:>10s} {cal.n:5d} {_f(cal.coverage, '8.3f')} "
                     f"{_f(cal.window_coverage, '8.3f')} "
                     f"{_f(cal.bias and cal.bias * 100, '+7.2f')}% "
                     f"{_f(cal.mae and cal.mae * 100, '6.2f')}% "
                     f"{_f(cal.mean_half_width and cal.mean_half_width * 100, '6.2f')}% "
                     f"{_f(cal.median_width and cal.median_width * 100, '6.2f')}%")
    c = report.coverage
    lines.append(f"  coverage ĉ vs true c: cover95 {_f(c.coverage, '.3f')}, bias "
                 f"{_f(c.bias, '+.2f')} pp, truth {_f(c.mean_truth * 100, '.1f')} %")
    b = report.block_hashrate
    if b is not None:
        lines.append(f"  block hashrate (120 blocks) vs true mean over its span: cover95 "
                     f"{_f(b.coverage, '.3f')}, bias {_f(b.bias and b.bias * 100, '+.2f')} %, "
                     f"±{_f(b.mean_half_width and b.mean_half_width * 100, '.1f')} %")
    return lines


def _region_lines(report: WorldsReport, max_regions: int) -> list[str]:
    """Per region: share and hashrate calibration; pooled and by band of true share."""
    lines: list[str] = []
    lines.append("")
    lines.append("regions: share_ci95 vs true network share; hashrate_ci95_hs vs true hashrate")
    lines.append(f"  {'region':7s} {'share%':>7s} {'n':>5s} {'miss':>4s} {'cov':>6s} {'covW':>6s} "
                 f"{'bias pp':>8s} {'MAE pp':>7s} {'±pp':>6s} {'sampl pp':>8s} | "
                 f"{'cov H':>6s} {'bias H':>7s} {'±H':>6s}")
    for share, hs in list(zip(report.shares, report.hashrates, strict=True))[:max_regions]:
        lines.append(
            f"  {share.series:7s} {share.mean_truth * 100:7.2f} {share.n:5d} {share.missing:4d} "
            f"{_f(share.coverage, '6.3f')} {_f(share.window_coverage, '6.3f')} "
            f"{_f(share.bias, '+8.3f')} {_f(share.mae, '7.3f')} "
            f"{_f(share.mean_half_width, '6.3f')} {_f(share.sample_bias, '+8.3f')} | "
            f"{_f(hs.coverage, '6.3f')} {_f(hs.bias and hs.bias * 100, '+6.1f')}% "
            f"{_f(hs.mean_half_width and hs.mean_half_width * 100, '5.1f')}%")
    pooled = report.pooled
    lines.append("  pooled coverage: countries share "
                 f"{_f(pooled.get('countries_share'), '.3f')}, hashrate "
                 f"{_f(pooled.get('countries_hashrate'), '.3f')}; subdivisions share "
                 f"{_f(pooled.get('subdivisions_share'), '.3f')}, hashrate "
                 f"{_f(pooled.get('subdivisions_hashrate'), '.3f')}; sample hashrate "
                 f"(truth: sampled pools' hashrate in the region) countries "
                 f"{_f(pooled.get('countries_sample_hashrate'), '.3f')}, subdivisions "
                 f"{_f(pooled.get('subdivisions_sample_hashrate'), '.3f')}")
    if report.share_bands:
        lines.append("  share_ci95 by band of true share: n, missing, cover (missing = miss), "
                     "cover of served, cover (missing within unlisted max), median ±pp")
        for band in report.share_bands:
            low, high = band["band"]
            half = band["median_half_width"]
            lines.append(f"    {low * 100:4g}–{high * 100:<4g}% {band['n']:6d} "
                         f"{band['missing']:6d} {_f(band['coverage'], '6.3f')} "
                         f"{_f(band['served_coverage'], '6.3f')} "
                         f"{_f(band['unlisted_coverage'], '6.3f')} "
                         f"{_f(half and half * 100, '7.3f')}")
            if band.get("unobserved"):
                unseen = band["unobserved_median_half_width"]
                lines.append(f"      of which listed unobserved {band['unobserved']:6d}: cover "
                             f"{_f(band['unobserved_coverage'], '6.3f')}, median ±pp "
                             f"{_f(unseen and unseen * 100, '7.3f')}")
    return lines


def _window_and_detection_lines(report: WorldsReport) -> list[str]:
    """Window-edge bias per pool, and shift detection per shock."""
    lines: list[str] = []
    if report.windows:
        lines.append("")
        lines.append("window edges: each sampled pool's windowed hashrate vs its true mean "
                     "over the window")
        for cal in report.windows:
            lines.append(f"  {cal.kind:10s} {cal.series:14s} n={cal.n:5d} bias "
                         f"{_f(cal.bias and cal.bias * 100, '+.2f')}% MAE "
                         f"{_f(cal.mae and cal.mae * 100, '.2f')}%")
    if report.detection:
        d = report.detection
        lines.append("")
        lines.append(f"shift detection over {d['worlds']} tracked worlds: false alarms "
                     f"{d['false_alarms']} ({_f(d['false_alarms_per_week'], '.2f')} per week)")
        for name, entry in d["shocks"].items():
            lines.append(f"  {name:28s} {entry['status']} median delay "
                         f"{_f(entry['median_delay_min'], '.0f')} min")
        for name, phases in d.get("by_region", {}).items():
            for phase, row in phases.items():
                lines.append(f"  {name:28s} own region, {phase}: caught {row['caught']} of "
                             f"{row['runs']}, delay median {_f(row['median_min'], '.1f')} / "
                             f"p90 {_f(row['p90_min'], '.1f')} / max "
                             f"{_f(row['max_min'], '.1f')} min")
        lines.append(f"  mirror effects labelled (runs): {d.get('mirrors_labelled') or 'none'}")
    return lines


def format_worlds_report(report: WorldsReport, max_regions: int = 40) -> str:
    lines = [f"scenario {report.scenario}: {report.worlds} worlds (seed {report.seed}), checks at "
             + ", ".join(f"{c / 3600:g} h" for c in report.checks)
             + f"; {report.seconds:.0f} s"]
    lines += _network_lines(report)
    lines += _region_lines(report, max_regions)
    lines += _window_and_detection_lines(report)
    lines.extend(report.notes)
    return "\n".join(lines)


def worlds_report_json(report: WorldsReport) -> dict[str, Any]:
    return asdict(report)
