"""One estimate snapshot from the pipeline's merged inputs (pure; the leader does the I/O).

Inputs are per-partition window totals (mergeable sums, so 1, 2 or 4 workers give the same
numbers), a summary of the best chain and the latest BTC/USD price. Output is the JSON of
``GET /v1/estimates/current`` plus one history point per series.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.core.blocks import block_subsidy_sat
from streams.core.electricity import (
    REFERENCE_PRICE_USD_KWH,
    HardwareTable,
    Method,
    PowerBand,
    annualized_twh,
    hashprice_usd_ph_day,
    power_band_w,
    profitability_threshold_j_gh,
    region_price,
    regional_power_bands,
)
from streams.core.intervals import compound_poisson_interval, poisson_interval
from streams.core.network import (
    DEFAULT_COVERAGE_MEMORY_BLOCKS,
    DEFAULT_DISAGREEMENT_Z,
    DEFAULT_SHIFT_RECENT_BLOCKS,
    DEFAULT_SHIFT_Z,
    BlockHashrate,
    Coverage,
    CoverageAssessment,
    NetworkEstimate,
    assess_coverage,
    interval_note,
    nowcast_network_hashrate,
)
from streams.core.network_shares import (
    NetworkContext,
    ShareUncertainty,
    network_context,
    network_share_intervals,
    pooled_heterogeneity,
)
from streams.core.pools import PoolMemory, pools_section
from streams.core.regions import (
    Level,
    RegionShare,
    Weighting,
    country_of,
    is_subdivision,
    region_name,
    region_shares,
    regional_hashrates,
)
from streams.core.sites import site_utilisation
from streams.core.units import HASHES_PER_DIFFICULTY, SECONDS_PER_DAY
from streams.core.unobserved_regions import bounded_shares
from streams.models.chain import NOWCAST_BLOCKS, PLAUSIBILITY_BLOCKS, ChainSummary
from streams.models.partials import SharePartial

#: Time constant of the live threshold's exponential mean: the mean age of a 14-day window.
THRESHOLD_SMOOTHING_S = 7 * SECONDS_PER_DAY
Key = tuple[str, str]


@dataclass(frozen=True)
class SampleTotals:
    """Share totals of one (pool, region) over a window, mergeable across partitions."""

    count: float
    difficulty_sum: float
    difficulty_sq_sum: float
    effective_seconds: float
    share_scale: float  # typical share size (Σd²/Σd over the key's history), for small counts

    def merged(self, other: SampleTotals) -> SampleTotals:
        return SampleTotals(
            self.count + other.count,
            self.difficulty_sum + other.difficulty_sum,
            self.difficulty_sq_sum + other.difficulty_sq_sum,
            max(self.effective_seconds, other.effective_seconds),
            max(self.share_scale, other.share_scale),
        )

    @property
    def hashrate_hs(self) -> float:
        return self.difficulty_sum * HASHES_PER_DIFFICULTY / self.effective_seconds

    @property
    def se_hs(self) -> float:
        return math.sqrt(self.difficulty_sq_sum) * HASHES_PER_DIFFICULTY / self.effective_seconds

    def ci95_hs(self) -> tuple[float, float]:
        lower, upper = compound_poisson_interval(
            self.difficulty_sum, self.difficulty_sq_sum, share_scale=self.share_scale)
        scale = HASHES_PER_DIFFICULTY / self.effective_seconds
        return lower * scale, upper * scale


@dataclass(frozen=True)
class MergedSample:
    """Window totals of every partition, merged, at one evaluation time."""

    as_of: float
    max_event_ts: float
    windows: dict[float, dict[Key, SampleTotals]]
    #: Per (pool, region): Σ D·HHI, Σ D reported, Σ D unreported (``core/account_concentration``).
    concentration: dict[Key, tuple[float, float, float]] = field(default_factory=dict)


def merge_partials(partials: Iterable[SharePartial]) -> MergedSample | None:
    """Merge the partials workers wrote per partition (see ``ShareBatchPartition.partial``)."""
    windows: dict[float, dict[Key, SampleTotals]] = {}
    concentration: dict[Key, tuple[float, float, float]] = {}
    as_of = 0.0
    max_event_ts = 0.0
    seen = False
    for partial in partials:
        seen = True
        as_of = max(as_of, partial.t_eval)
        max_event_ts = max(max_event_ts, partial.max_event_ts)
        for window, rows in partial.windows.items():
            totals = windows.setdefault(window, {})
            for row in rows:
                sample = SampleTotals(row.share_count, row.difficulty_sum, row.difficulty_sq_sum,
                                      row.effective_seconds, row.share_scale)
                key = (row.pool, row.region)
                previous = totals.get(key)
                totals[key] = sample if previous is None else previous.merged(sample)
        merge_concentration(concentration, partial.concentration)
    if not seen:
        return None
    return MergedSample(as_of=as_of, max_event_ts=max_event_ts, windows=windows,
                        concentration=concentration)


def merge_concentration(into: dict[Key, tuple[float, float, float]],
                        rows: Iterable[Sequence[Any]]) -> None:
    """Add a partial's concentration rows [pool, region, Σ D·HHI, Σ D, Σ D unreported]."""
    for pool, region, weighted, reported, unreported in rows:
        key = (str(pool), str(region))
        old = into.get(key, (0.0, 0.0, 0.0))
        into[key] = (old[0] + float(weighted), old[1] + float(reported),
                     old[2] + float(unreported))


@dataclass(frozen=True)
class EstimationConfig:
    """What the snapshot needs beyond the data: method choices and reference tables."""

    headline_window_s: float
    hardware: HardwareTable
    default_price_usd_kwh: float = REFERENCE_PRICE_USD_KWH
    prices_usd_kwh: Mapping[str, float] = field(default_factory=dict)
    method: Method = "1.4.0"
    suspect_regions: Mapping[str, str | None] = field(default_factory=dict)
    weighting: Weighting = "pooled"
    block_window: int = NOWCAST_BLOCKS
    #: A pool whose sample exceeds this multiple of what its blocks allow is set aside.
    plausibility_factor: float = 3.0
    #: Blocks needed in the coverage window before pools are judged against them.
    plausibility_min_blocks: int = 144
    #: Energised mining capacity (W) of the site registry per country and subdivision, the
    #: denominator of the snapshot's ``site_utilisation`` (empty: no utilisation).
    site_capacity_w: Mapping[str, float] = field(default_factory=dict)
    #: Pools that mine for another (slug → parent slug), for the pools section's grouping.
    pool_groups: Mapping[str, str] = field(default_factory=dict)
    #: ĉ's memory (blocks weigh exp(−age/memory)) and the recent-against-older coverage test
    #: (``streams.core.network.assess_coverage``).
    coverage_memory_blocks: float = DEFAULT_COVERAGE_MEMORY_BLOCKS
    coverage_shift_recent_blocks: int = DEFAULT_SHIFT_RECENT_BLOCKS
    coverage_shift_z: float = DEFAULT_SHIFT_Z
    #: Countries known to mine (``streams/data/mining_regions.csv``): listed even when the sample
    #: shows none of their hashrate, flagged unobserved, with a bound on their network share.
    known_regions: tuple[str, ...] = ()
    #: Disagreement (in standard errors) between the share-based and block-based estimates
    #: beyond which the network interval is scaled by it (``nowcast_network_hashrate``).
    nowcast_disagreement_z: float = DEFAULT_DISAGREEMENT_Z


def implausible_pools(
    totals: Mapping[Key, SampleTotals], chain: ChainSummary, factor: float, min_blocks: int
) -> dict[str, float]:
    """Pools whose sampled hashrate their own blocks cannot explain, with sample/bound ratios.

    A pool finding k of the last n blocks holds at most Garwood-upper(k)/n of the network (95 %),
    and the network at most the upper bound of GetNetworkHashPS over those blocks. A share feed
    claiming ``factor`` times more than that (a broken proxy, a forged difficulty) is set aside
    and named, so it cannot move the network estimate."""
    window = next(filter(None, (chain.rates.get(n) for n in PLAUSIBILITY_BLOCKS)), None)
    if chain.blocks < min_blocks or window is None:
        return {}
    pool_blocks = chain.pool_blocks
    n = sum(pool_blocks.values())
    network_upper = window.upper_hs
    by_pool: dict[str, float] = {}
    for (pool, _), t in totals.items():
        by_pool[pool] = by_pool.get(pool, 0.0) + t.hashrate_hs
    flagged = {}
    for pool, hashrate in by_pool.items():
        bound = poisson_interval(float(pool_blocks.get(pool, 0)))[1] / n * network_upper
        if hashrate > factor * bound:
            flagged[pool] = hashrate / bound
    return flagged


@dataclass
class SnapshotMemory:
    """What carries over from one snapshot to the next: the smoothed profitability threshold."""

    threshold_j_gh: float | None = None
    threshold_at: float | None = None
    pools: PoolMemory = field(default_factory=PoolMemory)

    def smoothed_threshold(self, value: float, at: float) -> float:
        if self.threshold_j_gh is None or self.threshold_at is None or at <= self.threshold_at:
            if self.threshold_j_gh is None:
                self.threshold_j_gh, self.threshold_at = value, at
            return self.threshold_j_gh
        weight = 1.0 - math.exp(-(at - self.threshold_at) / THRESHOLD_SMOOTHING_S)
        self.threshold_j_gh += weight * (value - self.threshold_j_gh)
        self.threshold_at = at
        return self.threshold_j_gh


def _band(band: PowerBand | None) -> dict[str, float] | None:
    if band is None:
        return None
    return {"lower": band.lower_w, "best": band.best_w, "upper": band.upper_w}


def _twh(band: PowerBand | None) -> dict[str, float] | None:
    if band is None:
        return None
    return {"lower": annualized_twh(band.lower_w), "best": annualized_twh(band.best_w),
            "upper": annualized_twh(band.upper_w)}


def _block_hashrate(chain: ChainSummary, nblocks: int) -> BlockHashrate | None:
    rate = chain.rates.get(nblocks)
    if rate is None:
        return None
    return BlockHashrate(rate.hashrate_hs, (rate.lower_hs, rate.upper_hs), rate.blocks,
                         rate.span_s)


def _threshold(
    chain: ChainSummary, btc_usd: float | None, network_hs: float
) -> float | None:
    """θ at the reference price, from the chain's reward and difficulty and the BTC price."""
    tip = chain.tip
    if btc_usd is None or tip is None or network_hs <= 0:
        return None
    reward_sat = tip.subsidy_sat + (chain.mean_fees_sat or 0.0)
    blocks_per_day = network_hs * SECONDS_PER_DAY / (tip.difficulty * HASHES_PER_DIFFICULTY)
    revenue_usd_day = reward_sat / 1e8 * blocks_per_day * btc_usd
    return float(profitability_threshold_j_gh(revenue_usd_day, network_hs / 1e12))


@dataclass(frozen=True)
class _NetworkView:
    """The network-level results of one snapshot, which the regional entries build on."""

    sample_hs: float
    sampled_pools: set[str]
    assessment: CoverageAssessment | None
    blocks: BlockHashrate | None
    network: NetworkEstimate | None
    threshold: float | None
    band: PowerBand | None
    hashprice: float | None

    @property
    def coverage(self) -> Coverage | None:
        return self.assessment.coverage if self.assessment else None


def _headline_totals(sample: MergedSample, chain: ChainSummary, config: EstimationConfig
                     ) -> tuple[dict[Key, SampleTotals], dict[str, float]]:
    """The headline window's totals without the pools their own blocks prove implausible."""
    totals = {key: t for key, t in sample.windows.get(config.headline_window_s, {}).items()
              if t.effective_seconds > 0}
    flagged = implausible_pools(totals, chain, config.plausibility_factor,
                                config.plausibility_min_blocks)
    return {key: t for key, t in totals.items() if key[0] not in flagged}, flagged


def _hashprice(chain: ChainSummary, btc_usd: float | None, network_hs: float
               ) -> float | None:
    tip = chain.tip
    if btc_usd is None or network_hs <= 0 or tip is None:
        return None
    blocks_per_day = network_hs * SECONDS_PER_DAY / (tip.difficulty * HASHES_PER_DIFFICULTY)
    return hashprice_usd_ph_day(
        block_subsidy_sat(tip.height + 1), chain.mean_fees_sat or 0.0,
        blocks_per_day, btc_usd, network_hs)


def _network_view(sample: MergedSample, totals: Mapping[Key, SampleTotals],
                  chain: ChainSummary, btc_usd: float | None, config: EstimationConfig,
                  memory: SnapshotMemory) -> _NetworkView:
    """Coverage, the fused nowcast, the profitability threshold, the power band, hashprice."""
    sample_hs = float(sum(t.hashrate_hs for t in totals.values()))
    sample_se = math.sqrt(sum(t.se_hs**2 for t in totals.values()))
    sampled_pools = {pool for (pool, _), t in totals.items() if t.difficulty_sum > 0}
    assessment = None
    if chain.coverage_pools:
        assessment = assess_coverage(
            chain.coverage_pools, np.asarray(chain.coverage_works), sampled_pools,
            memory_blocks=config.coverage_memory_blocks,
            recent_blocks=config.coverage_shift_recent_blocks, shift_z=config.coverage_shift_z)
    blocks = _block_hashrate(chain, config.block_window)
    network = nowcast_network_hashrate(sample_hs if sample_hs > 0 else None, sample_se,
                                       assessment.coverage if assessment else None, blocks,
                                       disagreement_z=config.nowcast_disagreement_z)
    network_hs = network.hashrate_hs if network else 0.0
    threshold_now = _threshold(chain, btc_usd, network_hs)
    threshold = (memory.smoothed_threshold(threshold_now, sample.as_of)
                 if threshold_now is not None else None)
    band = (power_band_w(network_hs, threshold, config.hardware, sample.as_of, config.method)
            if threshold is not None else None)
    return _NetworkView(sample_hs, sampled_pools, assessment, blocks, network, threshold, band,
                        _hashprice(chain, btc_usd, network_hs))


def _network_entry(view: _NetworkView, chain: ChainSummary, flagged: Mapping[str, float],
                   kappa: float | None) -> dict[str, Any]:
    network, coverage, assessment, blocks = (view.network, view.coverage, view.assessment,
                                             view.blocks)
    return {
        "hashrate_hs": network.hashrate_hs if network else None,
        "hashrate_ci95_hs": list(network.ci95_hs) if network else None,
        "source": network.source if network else "none",
        "sources": list(network.sources) if network else [],
        "coverage": coverage.sampled_work_share if coverage else None,
        "coverage_ci95": list(coverage.ci95) if coverage else None,
        # A region no sampled pool sees can only be in the unsampled part (1 − ĉ).
        "unlisted_region_share_max": 1.0 - coverage.ci95[0] if coverage else 1.0,
        "region_heterogeneity_kappa": kappa,
        "coverage_status": assessment.status if assessment else None,
        "coverage_long_window": (assessment.long_window.sampled_work_share
                                 if assessment else None),
        "coverage_shift_z": assessment.shift.z if assessment and assessment.shift else None,
        "interval_note": interval_note(assessment, network),
        "sample_hashrate_hs": view.sample_hs,
        "power_w": _band(view.band),
        "annualized_twh": _twh(view.band),
        "hashprice_usd_ph_day": view.hashprice,
        "profitability_threshold_j_gh": view.threshold,
        "block_hashrate_hs": blocks.hashrate_hs if blocks else None,
        "block_hashrate_ci95_hs": list(blocks.ci95_hs) if blocks else None,
        "blocks_seen": chain.blocks,
        "tip_height": chain.tip_height,
        "implausible_pools": {pool: round(ratio, 3) for pool, ratio in flagged.items()},
    }


class _SampleIntervals:
    """Exact (compound-Poisson) interval of each region's own sample, over its pools; a
    country's covers its subdivisions. Totals are grouped once: it runs for every entry."""

    def __init__(self, totals: Mapping[Key, SampleTotals]) -> None:
        self.by_region: dict[str, list[SampleTotals]] = {}
        self.by_country: dict[str, list[SampleTotals]] = {}
        for (_, region), t in totals.items():
            self.by_region.setdefault(region, []).append(t)
            self.by_country.setdefault(country_of(region), []).append(t)

    def of(self, code: str) -> list[float] | None:
        """Pools still warming up have shorter T_eff: each is rescaled to the longest T_eff so
        the summed totals keep the mean and variance of the summed hashrates."""
        parts = (self.by_region if is_subdivision(code) else self.by_country).get(code)
        if not parts:
            return None
        longest = max(t.effective_seconds for t in parts)
        ratios = [longest / t.effective_seconds for t in parts]
        combined = SampleTotals(
            sum(t.count for t in parts),
            sum(t.difficulty_sum * r for t, r in zip(parts, ratios, strict=True)),
            sum(t.difficulty_sq_sum * r * r for t, r in zip(parts, ratios, strict=True)),
            longest,
            max(t.share_scale * r for t, r in zip(parts, ratios, strict=True)),
        )
        return list(combined.ci95_hs())


@dataclass(frozen=True)
class _RegionalShares:
    countries: dict[str, RegionShare]
    country_parts: dict[str, ShareUncertainty]
    subdivisions: dict[str, RegionShare]
    subdivision_parts: dict[str, ShareUncertainty]
    #: κ̂ of the countries (``PooledHeterogeneity``); None without any listed country.
    kappa: float | None


def _bounded(shares: Mapping[str, RegionShare], totals: Mapping[Key, SampleTotals],
             context: NetworkContext, config: EstimationConfig, level: Level,
             known: Iterable[str]) -> tuple[dict[str, RegionShare], dict[str, ShareUncertainty],
                                            float]:
    """Network-share intervals with upper ends raised to the bound on an unseen region, plus
    the known regions the sample does not see; and κ̂ (``streams.core.unobserved_regions``)."""
    intervals, parts = network_share_intervals(shares, totals, context, level=level,
                                               weighting=config.weighting)
    pooled = pooled_heterogeneity(shares, totals, context, level=level,
                                  weighting=config.weighting)
    bounded, bounded_parts = bounded_shares(intervals, parts, pooled, list(known))
    return bounded, bounded_parts, pooled.kappa


def _sample_shares(totals: Mapping[Key, SampleTotals], chain: ChainSummary,
                   config: EstimationConfig
                   ) -> tuple[dict[str, RegionShare], dict[str, RegionShare]]:
    """Country and subdivision shares of the sample, with their sampling-only intervals."""
    pool_weights = None
    if config.weighting == "pool_weighted":
        pool_weights = {p: float(w) for p, w in chain.pool_work.items()}
    countries = region_shares(totals, weighting=config.weighting, pool_weights=pool_weights,
                              suspect_regions=config.suspect_regions, level="country")
    subdivisions = {code: entry for code, entry in region_shares(
        totals, weighting=config.weighting, pool_weights=pool_weights,
        suspect_regions=config.suspect_regions, level="subdivision").items()
        if is_subdivision(code)}
    return countries, subdivisions


def _regional_shares(totals: Mapping[Key, SampleTotals], chain: ChainSummary,
                     config: EstimationConfig, view: _NetworkView,
                     concentration: Mapping[Key, tuple[float, float, float]]) -> _RegionalShares:
    """Country and subdivision shares with their network-share intervals."""
    countries, subdivisions = _sample_shares(totals, chain, config)
    coverage = view.coverage
    context = network_context(chain, coverage.sampled_work_share if coverage else None,
                              coverage.ci95 if coverage else None, view.sampled_pools,
                              concentration)
    country_shares, country_parts, kappa = _bounded(countries, totals, context, config,
                                                    "country", config.known_regions)
    subdivision_shares, subdivision_parts, _ = _bounded(subdivisions, totals, context, config,
                                                        "subdivision", ())
    return _RegionalShares(country_shares, country_parts, subdivision_shares, subdivision_parts,
                           kappa if countries else None)


def _region_entries(shares: Mapping[str, RegionShare], parts: Mapping[str, ShareUncertainty],
                    subdivisions: Iterable[str], view: _NetworkView, config: EstimationConfig,
                    intervals: _SampleIntervals, as_of: float) -> list[dict[str, Any]]:
    """One entry per region, largest share first: share, intervals, hashrate, power."""
    network, threshold = view.network, view.threshold
    hashrates = (regional_hashrates(shares, network.hashrate_hs, network.ci95_hs)
                 if network is not None else {})
    bands: dict[str, PowerBand] = (regional_power_bands(
        {code: h.hashrate_hs for code, h in hashrates.items()}, threshold,
        hardware=config.hardware, at_unix=as_of, prices=config.prices_usd_kwh,
        default_price=config.default_price_usd_kwh, method=config.method,
    ) if network is not None and threshold is not None else {})
    subdivision_codes = sorted(subdivisions)
    out = []
    for code in sorted(shares, key=lambda c: -shares[c].share):
        share, part = shares[code], parts[code]
        regional, band = hashrates.get(code), bands.get(code)
        out.append({
            "region": code,
            "name": region_name(code),
            "share": share.share,
            "share_ci95": list(share.share_ci95),
            "sampling_ci95": list(share.sampling_ci95 or share.share_ci95),
            "share_se_parts": {"sampling": part.sampling, "pool_weights": part.pool_weights,
                               "heterogeneity": part.heterogeneity,
                               "clustering": part.clustering},
            "observed": share.observed,
            "interval_basis": share.interval_basis,
            "hashrate_hs": regional.hashrate_hs if regional else None,
            "hashrate_ci95_hs": list(regional.hashrate_ci95_hs) if regional else None,
            "sample_hashrate_hs": share.sample_hashrate_hs,
            "sample_hashrate_ci95_hs": intervals.of(code),
            "power_w": _band(band),
            "annualized_twh": _twh(band),
            "electricity_usd_kwh": region_price(code, config.prices_usd_kwh,
                                                config.default_price_usd_kwh),
            "subdivisions": [s for s in subdivision_codes if country_of(s) == code],
        })
    return out


def build_snapshot(
    sample: MergedSample,
    chain: ChainSummary,
    btc_usd: float | None,
    config: EstimationConfig,
    memory: SnapshotMemory,
    *,
    published_at: float,
    stale: bool,
) -> dict[str, Any]:
    """The snapshot JSON for the headline window (``streams.models.snapshot.EstimateSnapshot``
    describes every field; the leader adds ``inputs``). ``ChainSummary()`` (no blocks): no
    chain yet."""
    totals, flagged = _headline_totals(sample, chain, config)
    view = _network_view(sample, totals, chain, btc_usd, config, memory)
    shares = _regional_shares(totals, chain, config, view, sample.concentration)
    intervals = _SampleIntervals(totals)
    network = view.network
    snapshot: dict[str, Any] = {
        "type": "estimate",
        "as_of": sample.as_of,
        "published_at": published_at,
        "window_s": config.headline_window_s,
        "stale": stale,
        "max_event_ts": sample.max_event_ts,
        "network": _network_entry(view, chain, flagged, shares.kappa),
        "regions": _region_entries(shares.countries, shares.country_parts, shares.subdivisions,
                                   view, config, intervals, sample.as_of),
        "subdivisions": _region_entries(shares.subdivisions, shares.subdivision_parts,
                                        shares.subdivisions, view, config, intervals,
                                        sample.as_of),
        "pools": pools_section(sample.as_of, sample.windows, chain,
                               network.hashrate_hs if network else None,
                               network.ci95_hs if network else None, btc_usd, memory.pools,
                               config.pool_groups),
    }
    snapshot["site_utilisation"] = site_utilisation_of(snapshot, config.site_capacity_w)
    return snapshot


def site_utilisation_of(snapshot: Mapping[str, Any],
                        capacity_w: Mapping[str, float]) -> list[dict[str, Any]]:
    """Each region's (and subdivision's) power band ÷ the energised mining capacity of the
    site registry there, with the band's interval (`streams.core.sites.site_utilisation`);
    regions without a power band or without registry capacity are left out."""
    return site_utilisation([*snapshot["regions"], *snapshot["subdivisions"]], capacity_w)


def history_points(snapshot: Mapping[str, Any], t: float) -> dict[str, dict[str, Any]]:
    """One history point per series (``network`` and every region) at time ``t``."""
    network = snapshot["network"]
    points = {"network": {
        "t": t, "share": 1.0, "hashrate_hs": network["hashrate_hs"],
        "power_w_best": (network["power_w"] or {}).get("best"),
    }}
    for entry in [*snapshot["regions"], *snapshot["subdivisions"]]:
        if not entry.get("observed", True):  # an unseen region has no series of its own
            continue
        points[entry["region"]] = {
            "t": t, "share": entry["share"], "hashrate_hs": entry["hashrate_hs"],
            "power_w_best": (entry["power_w"] or {}).get("best"),
        }
    return points


def detection_shares(sample: MergedSample, chain: ChainSummary | None,
                     config: EstimationConfig, memory: SnapshotMemory
                     ) -> dict[str, tuple[float, float]] | None:
    """``shares_for_detection`` of the snapshot ``build_snapshot`` would make from the same
    inputs, or None when that snapshot has no network hashrate (the leader then feeds the
    detector nothing). Skips the network-share intervals, power, pools and sites, which the
    detector does not read: the offline evaluator calls it once a history step."""
    chain = chain or ChainSummary()
    totals, _ = _headline_totals(sample, chain, config)
    blocks = _block_hashrate(chain, config.block_window)
    # A block hashrate alone gives a nowcast (``nowcast_network_hashrate``): the coverage
    # assessment is needed only without one.
    if (blocks is None or blocks.hashrate_hs <= 0.0) and _network_view(
            sample, totals, chain, None, config, memory).network is None:
        return None
    countries, subdivisions = _sample_shares(totals, chain, config)
    ordered = [*sorted(countries.items(), key=lambda item: -item[1].share),
               *sorted(subdivisions.items(), key=lambda item: -item[1].share)]
    # In the snapshot's order: the detector numbers regions as they first appear.
    return {code: (entry.share, _sampling_se(entry)) for code, entry in ordered}


def _sampling_se(entry: RegionShare) -> float:
    low, high = entry.sampling_ci95 or entry.share_ci95
    return (high - low) / (2 * 1.959964)


def shares_for_detection(snapshot: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Country and subdivision shares with their sampling standard errors (from
    ``sampling_ci95``), for shift detection (which alerts on a subdivision only above its minimum
    share): heterogeneity and clustering are persistent offsets, not moves over time."""
    def interval(entry: Mapping[str, Any]) -> Sequence[float]:
        return entry.get("sampling_ci95") or entry["share_ci95"]

    return {
        entry["region"]: (entry["share"],
                          (interval(entry)[1] - interval(entry)[0]) / (2 * 1.959964))
        for entry in [*snapshot["regions"], *snapshot.get("subdivisions", [])]
        if entry.get("observed", True)  # an unseen region's 0 is no measurement to track
    }
