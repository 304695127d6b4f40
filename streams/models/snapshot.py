"""The estimate snapshot as a typed model: what ``streams.core.snapshot.build_snapshot`` builds,
the leader publishes (plus ``inputs``) and ``GET /v1/estimates/current`` serves.

The leader validates every snapshot through :class:`EstimateSnapshot` before publishing it and
the API declares it as the response model, so the OpenAPI schema is generated from what is
served. Unknown fields are forbidden at every level: a field added to ``build_snapshot`` without
its model field (and its description) fails the leader's validation and the tests.

Each description says what a value is, its unit, and the assumption it rests on. Units: H/s for
hashrates, W for power, TWh/yr for energy, Unix seconds for times, shares as fractions 0..1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Pair = tuple[float, float]


class _Strict(BaseModel):
    """Unknown fields are errors: the model must describe everything that is served."""

    model_config = ConfigDict(extra="forbid")


# ---- network and regions -----------------------------------------------------------------------


class PowerBand(_Strict):
    """A CBECI-style band: the power (or energy) if the fleet were the most efficient profitable
    machines (lower), a weighted mix of them (best), or the least efficient profitable ones
    (upper), each with its PUE. It rests on the profitability threshold and the hardware table,
    not on measured consumption."""

    lower: float = Field(description="Lower bound: the most efficient profitable hardware, "
                         "W (power) or TWh/yr (energy)")
    best: float = Field(description="Best guess: the profitable hardware mix, W or TWh/yr")
    upper: float = Field(description="Upper bound: the least efficient profitable hardware, "
                         "W or TWh/yr")


class NetworkEntry(_Strict):
    """The whole network now: hashrate fused from the share sample and the blocks, its power
    and the chain facts it rests on."""

    hashrate_hs: float | None = Field(description=(
        "Network hashrate now, H/s: inverse-variance fusion on log scale of the share sample "
        "divided by its block coverage and of the block-based rate (GetNetworkHashPS over the "
        "block window); null when neither source is usable"))
    hashrate_ci95_hs: Pair | None = Field(description=(
        "95 % interval of hashrate_hs, H/s (log-normal; widened by the Birge ratio when the two "
        "sources disagree by more than 1.96 standard errors); null with hashrate_hs"))
    source: Literal["fused", "shares", "blocks", "none"] = Field(description=(
        "Which estimate hashrate_hs is: both sources fused, one of them alone, or none"))
    sources: list[Literal["shares", "coverage", "blocks"]] = Field(description=(
        "The inputs used: shares and coverage (sample ÷ coverage), blocks (block-based rate)"))
    coverage: float | None = Field(description=(
        "Sampled pools' share of the recent blocks' work (ĉ, 0..1), from block attribution, each "
        "block weighted by exp(−age/120 blocks) (a local-level filter, so a drifting coverage is "
        "followed); from the last 144 blocks only when coverage_status is 'shifted'; null when "
        "the chain names no pools"))
    coverage_ci95: Pair | None = Field(description=(
        "Wilson 95 % interval of coverage (0..1) on the blocks' effective number under that "
        "weighting; null with coverage"))
    coverage_status: Literal["stable", "shifted", "short_history"] | None = Field(description=(
        "Whether the sampled pools' block share moved: 'stable' (the last 144 blocks agree with "
        "the older ones; coverage weighs blocks by exp(−age/120) so that a drift or a shock in "
        "unsampled pools is followed), 'shifted' (they differ beyond |z| 3; coverage from the "
        "last 144 blocks only, wider), 'short_history' (too few blocks to test); null without "
        "coverage"))
    coverage_long_window: float | None = Field(description=(
        "The sampled pools' share of the whole coverage window's block work (2016 blocks), "
        "every block alike: what coverage was before it forgot old blocks (0..1)"))
    coverage_shift_z: float | None = Field(description=(
        "Two-proportion z of the sampled pools' share in the last 144 blocks against the older "
        "blocks of the window (standard normal while coverage holds)"))
    interval_note: str | None = Field(description=(
        "Why the network interval is as wide as it is: coverage and its status, and whether the "
        "recent block rate disagrees with the share-based estimate"))
    unlisted_region_share_max: float = Field(description=(
        "At most this share of the network (1 − coverage_ci95's lower bound; 1 without "
        "coverage) lies in regions no sampled pool sees, together (holds without any model; "
        "the per-region bound of an unobserved listed region is its share_ci95)"))
    region_heterogeneity_kappa: float | None = Field(default=None, description=(
        "κ̂ (0..1): how differently the sampled pools mix countries, the between-pool "
        "variance of a country's mix per unit s(1 − s) pooled over the listed countries "
        "(0: every pool alike; 1: each pool in one country), shrunk toward the prior 0.01 "
        "worth 2 pools. It sets the bound on the share of a country the sample does not see "
        "(regions with observed false; interval_basis 'unobserved_bound'); null without "
        "shares"))
    sample_hashrate_hs: float = Field(description=(
        "Hashrate the share sample itself shows over the headline window, H/s, summed over the "
        "sampled pools (implausible pools left out); 0 without shares"))
    power_w: PowerBand | None = Field(description=(
        "Network electrical power, W, at hashrate_hs and the smoothed profitability threshold; "
        "null without a hashrate, BTC price or chain"))
    annualized_twh: PowerBand | None = Field(description=(
        "power_w held for a year, TWh/yr (W × 8766 h ÷ 1e12); null with power_w"))
    hashprice_usd_ph_day: float | None = Field(description=(
        "Expected miner revenue per PH/s per day, USD: next block's subsidy plus the mean fees "
        "of the last 144 blocks, at the blocks per day hashrate_hs implies at the tip's "
        "difficulty, at the latest BTC/USD price; null without a price or chain"))
    profitability_threshold_j_gh: float | None = Field(description=(
        "Efficiency, J/GH, above which hardware loses money at the reference electricity "
        "price, from the chain's reward and the BTC price; exponentially smoothed (7-day time "
        "constant); null without a price or chain"))
    block_hashrate_hs: float | None = Field(description=(
        "Hashrate implied by the last block_window blocks' work and time span, H/s "
        "(GetNetworkHashPS); describes the span's mean, not now; null without enough blocks"))
    block_hashrate_ci95_hs: Pair | None = Field(description=(
        "Exact (Poisson on the block count) 95 % interval of block_hashrate_hs, H/s"))
    blocks_seen: int = Field(description=(
        "Blocks of the best chain the workers hold (the most recent ones, up to the chain's "
        "capacity), count"))
    tip_height: int | None = Field(description=(
        "Height of the best chain's tip; null before any block"))
    implausible_pools: dict[str, float] = Field(description=(
        "Pools set aside because their sampled hashrate exceeds what their own blocks allow "
        "(pool slug → sample ÷ 95 % upper bound, rounded to 3 decimals); assumes a pool's "
        "blocks bound its hashrate"))


class ShareSeParts(_Strict):
    """A region's network-share standard error by source (``core/network_shares``), 0..1."""

    sampling: float = Field(description="Poisson error of the share sample itself")
    pool_weights: float = Field(description=(
        "Error of the pools' block-count weights (pool_weighted weighting only; else 0)"))
    heterogeneity: float = Field(description=(
        "Unsampled pools may mix regions differently: random effects across pools (τ² from "
        "their spread, shrunk to a prior κ·s(1−s) when pools are few) × (1/n_unsampled + Σw²)"
        "·(1 − ĉ)²"))
    clustering: float = Field(description=(
        "A region is a finite number of mining accounts: (1 − ĉ)·HHI of the sampled accounts "
        "(from share_batch.account_difficulty_sq_sum; ten equal accounts assumed where not "
        "reported)"))


class RegionEntry(_Strict):
    """One country (or ISO 3166-2 subdivision, or ZZ for unknown location) in the snapshot."""

    region: str = Field(description="ISO 3166-1 alpha-2 or ISO 3166-2 code, ZZ for unknown")
    name: str = Field(description="The region's English name (ISO 3166)")
    share: float = Field(description=(
        "The region's share of the sampled hashrate (0..1; pooled, or weighted by each pool's "
        "block share when configured; suspect VPN regions spread out): the point estimate of "
        "its share of the network"))
    share_ci95: Pair = Field(description=(
        "95 % interval of the region's share of the whole NETWORK (0..1): sampling, pool "
        "weights, between-pool heterogeneity and clustering added in quadrature "
        "(share_se_parts). Assumes the unsampled pools' regional mixes are drawn like the "
        "sampled pools' (random effects, shrunk to a prior when pools are few) and that a "
        "region's accounts sit at pools at random. Its upper end is never below the bound of "
        "an unobserved region (interval_basis). A country of the reference list that no "
        "sampled pool sees is listed with observed false and [0, bound]; other unseen regions "
        "are not listed "
        "(network.unlisted_region_share_max bounds them together). Not geolocation or VPN "
        "error"))
    sampling_ci95: Pair = Field(description=(
        "Delta-method 95 % interval of the share of the SAMPLE only (0..1): Poisson noise of the "
        "shares, what share_ci95 was before issue #14. Right for changes of the sample over "
        "time (shift detection uses it), not for the network's share"))
    share_se_parts: ShareSeParts = Field(description=(
        "share_ci95's standard error by source; they add in quadrature (interval_basis "
        "'delta'). For an unobserved region all but heterogeneity are 0 and heterogeneity is "
        "share_ci95's upper bound ÷ 1.96"))
    observed: bool = Field(default=True, description=(
        "False: no sampled share came from this country in the window; it is listed because "
        "the reference list of known mining countries (streams/data/mining_regions.csv, each "
        "row with its source and date) names it. Its share and sampling_ci95 are then 0 and "
        "share_ci95 is [0, bound] (interval_basis 'unobserved_bound'); each such country may "
        "hold the whole bound, so bounds do not add up. Not shift-tracked, no history "
        "series"))
    interval_basis: Literal["delta", "unobserved_bound"] = Field(default="delta", description=(
        "How share_ci95 was made. 'delta': share ± 1.96·SE of share_se_parts. "
        "'unobserved_bound': its upper end is the bound on a country the sample does not see, "
        "a/(1 + a) with a = 1.96²·κ̂·(1 − ĉ)²·(1/n_unsampled + Σw²) "
        "(network.region_heterogeneity_kappa): the largest network share s whose gap to a "
        "sample share of 0 is within 1.96 SE when pools' mixes vary by κ̂·s(1 − s). Used for "
        "unobserved countries and wherever share + 1.96·SE falls below that bound (a region "
        "seen at a tiny share is no better known than one not seen). Assumes the unsampled "
        "pools' mixes differ from the sampled pools' as much as the sampled pools differ among "
        "themselves, pooled over countries"))
    hashrate_hs: float | None = Field(description=(
        "share × network hashrate, H/s; null without a network estimate"))
    hashrate_ci95_hs: Pair | None = Field(description=(
        "95 % interval of hashrate_hs, H/s (delta method on the product, share and network "
        "taken as independent; carries share_ci95's limits); null with hashrate_hs"))
    sample_hashrate_hs: float = Field(description=(
        "Hashrate the sample itself shows in the region, H/s, summed over pools before "
        "weighting and redistribution"))
    sample_hashrate_ci95_hs: Pair | None = Field(description=(
        "Exact compound-Poisson 95 % interval of sample_hashrate_hs, H/s (a country's covers "
        "its subdivisions); null when no sample key falls in the region"))
    power_w: PowerBand | None = Field(description=(
        "The region's electrical power band, W, at its hashrate and the threshold at its own "
        "electricity price; null without a network hashrate or threshold"))
    annualized_twh: PowerBand | None = Field(description=(
        "power_w held for a year, TWh/yr; null with power_w"))
    electricity_usd_kwh: float = Field(description=(
        "Electricity price used for the region, USD/kWh: its own, its country's, or the "
        "reference default"))
    subdivisions: list[str] = Field(description=(
        "ISO 3166-2 codes of this country's subdivisions that have their own entry in the "
        "snapshot's subdivisions (empty for a subdivision)"))


# ---- pools -------------------------------------------------------------------------------------


class PoolWindowHashrate(_Strict):
    """A pool over the last window_blocks blocks."""

    blocks: int = Field(description="Blocks attributed to the pool in the window, count")
    window_blocks: int = Field(description="Length of the window, blocks")
    work_share: float = Field(description="Pool's share of the window's block work (0..1)")
    work_share_ci95: Pair | None = Field(description=(
        "Exact binomial 95 % interval (on the block count) of work_share (0..1); null when "
        "the pool found no block in the window"))
    hashrate_hs: float | None = Field(description=(
        "work_share × network hashrate, H/s; assumes block attribution is right; null without "
        "a network estimate or block"))
    hashrate_ci95_hs: Pair | None = Field(description=(
        "95 % interval of hashrate_hs, H/s, carrying both the block count and the network "
        "interval; null with hashrate_hs"))


class PoolLuck(_Strict):
    """Blocks found ÷ expected from the pool's share-measured hashrate over covered blocks."""

    covered_blocks: int = Field(description=(
        "Blocks of the window while the pool's share rate was known, count"))
    blocks_found: int = Field(description="Blocks the pool found among them, count")
    expected_blocks: float = Field(description=(
        "Blocks expected from the pool's sampled hashrate over each block's interval, count; "
        "assumes the sample sees all of the pool's hashrate"))
    luck: float | None = Field(description=(
        "blocks_found ÷ expected_blocks (1 = as expected); null when nothing was expected"))
    luck_ci95: Pair | None = Field(description=(
        "Garwood 95 % interval of luck on the found count; null with luck"))
    p_value: float = Field(description=(
        "Two-sided exact Poisson p-value of blocks_found given expected_blocks (0..1)"))


class PoolDivergence(_Strict):
    """A firing ``pool_divergence`` alert: the pool's blocks and shares disagree."""

    type: Literal["pool_divergence"] = Field(description="Alert type")
    id: str = Field(description="pool_divergence:<pool>:<direction>:<detected_at>")
    pool: str = Field(description="Pool slug")
    direction: Literal["blocks_above_shares", "blocks_below_shares"] = Field(description=(
        "Whether the pool finds more or fewer blocks than its shares predict"))
    detected_at: float = Field(description="When it fired, Unix seconds")
    window_blocks: int = Field(description="Window (blocks) of the worst evidence")
    covered_blocks: int = Field(description="Covered blocks of that window, count")
    blocks_found: int = Field(description="Blocks the pool found there, count")
    expected_blocks: float = Field(description="Blocks its shares predict there, count")
    luck: float | None = Field(description="blocks_found ÷ expected_blocks; null if none "
                               "expected")
    luck_ci95: Pair | None = Field(description="Garwood 95 % interval of luck; null with luck")
    p_value: float = Field(description="Poisson p-value of the evidence (fires below the "
                           "detector's fire_p)")
    share_hashrate_hs: float | None = Field(description=(
        "Pool's share-measured hashrate when it fired, H/s; null if unknown"))
    block_implied_hashrate_hs: float | None = Field(description=(
        "share_hashrate_hs × luck: the hashrate its blocks imply, H/s; null if either is"))
    likely_causes: list[str] = Field(description=(
        "What a divergence in this direction usually means, most likely first"))
    state: Literal["firing"] = Field(description="Always firing while listed in the snapshot")


class InsufficientBlocks(_Strict):
    """Why a sampled pool is not judged yet."""

    covered_blocks: int = Field(description=(
        "Most covered blocks over the windows, count (below the detector's minimum)"))


class PoolValidation(_Strict):
    """Whether the pool's shares and blocks agree."""

    status: Literal["consistent", "diverging", "insufficient_blocks", "not_sampled"] = Field(
        description=("consistent: luck within its interval; diverging: an active alert; "
                     "insufficient_blocks: too few covered blocks; not_sampled: no shares"))
    evidence: PoolDivergence | InsufficientBlocks | None = Field(description=(
        "The active alert (diverging), the covered block count (insufficient_blocks), or null"))


class PoolEntry(_Strict):
    """One pool: hashrate from blocks per window, luck and validation (sampled pools)."""

    pool: str = Field(description="Pool slug (lower case, from the pool's name)")
    name: str = Field(description="Pool's display name, as block attribution gives it")
    group: str | None = Field(description=(
        "Slug of the pool it mines for, when the pool list names a parent; else null"))
    sampled: bool = Field(description="Whether the share sample includes the pool")
    sample_hashrate_hs: float | None = Field(description=(
        "Pool's share-measured hashrate, H/s, over rate_window_s; null if not sampled"))
    hashrate: dict[str, PoolWindowHashrate] = Field(description=(
        "Hashrate from blocks per window, keyed by window length in blocks (\"144\", \"1008\", "
        "\"2016\")"))
    luck: dict[str, PoolLuck | None] | None = Field(description=(
        "Luck per window (same keys; null where not computed); null for a pool never sampled"))
    validation: PoolValidation = Field(description="Shares versus blocks verdict")


class AttributionMethod(_Strict):
    """Blocks attributed by one method (both, address, tag, feed, conflict, unknown)."""

    blocks: int = Field(description="Blocks attributed this way, count")
    work_share: float | None = Field(description=(
        "Their share of the window's work (0..1); null if the window has no work"))
    confidence: float = Field(description=(
        "Prior confidence (0..1) that a block attributed this way names the right pool"))


class AttributionQuality(_Strict):
    """How the coverage window's blocks were attributed to pools."""

    blocks: int = Field(description="Blocks in the coverage window, count")
    methods: dict[str, AttributionMethod] = Field(description="Per attribution method")
    unknown_work_share: float | None = Field(description=(
        "Work share of blocks attributed to no pool (0..1); null without work"))
    mean_confidence: float | None = Field(description=(
        "Work-weighted mean prior confidence (0..1); null without work"))
    conflicts: dict[str, int] = Field(description=(
        "Blocks whose address and coinbase tag name different pools, per "
        "\"<pool><-<tag's pool>\" pair, count"))


class HashpriceSummary(_Strict):
    """Hashprice over the last 144 blocks whose fees are known, at the tip's difficulty; only
    ``blocks`` (0) when none is known."""

    blocks: int = Field(description="Blocks with known fees it rests on, count")
    mean_reward_sat: float | None = Field(default=None, description=(
        "Mean subsidy + fees per block, satoshi; absent when blocks is 0"))
    mean_fees_sat: float | None = Field(default=None, description=(
        "Mean fees per block, satoshi; absent when blocks is 0"))
    difficulty: float | None = Field(default=None, description=(
        "The tip's difficulty; absent when blocks is 0"))
    hashprice_sats_th_day: float | None = Field(default=None, description=(
        "Expected revenue per TH/s per day at mean_reward_sat, satoshi; absent when blocks is 0"))
    hashprice_usd_ph_day: float | None = Field(default=None, description=(
        "The same per PH/s per day in USD at the latest price; null without a price"))
    hashvalue_btc_ph_day: float | None = Field(default=None, description=(
        "Hashprice in bitcoin per PH/s per day (moves with difficulty, not price)"))
    fpps_sats_th_day: float | None = Field(default=None, description=(
        "What a full-pay-per-share pool pays before its fee: next subsidy + mean fees, "
        "satoshi per TH/s per day"))
    fpps_usd_ph_day: float | None = Field(default=None, description=(
        "fpps in USD per PH/s per day; null without a price"))
    pps_sats_th_day: float | None = Field(default=None, description=(
        "Subsidy alone per TH/s per day, satoshi"))


class PoolsSection(_Strict):
    """Every pool of the coverage window and every sampled pool, largest work share first."""

    windows: list[int] = Field(description="Block windows of hashrate and luck (144, 1008, "
                               "2016)")
    tip_height: int | None = Field(description="The chain tip's height; null before any block")
    rate_window_s: float | None = Field(description=(
        "Share window used for the pools' sampled rates, s (the one nearest a block interval "
        "that has data); null without shares"))
    pools: list[PoolEntry] = Field(description="The pools, largest 2016-block work share first")
    diverging: list[PoolDivergence] = Field(description="Active pool_divergence alerts")
    attribution: AttributionQuality | None = Field(description=(
        "How the window's blocks were attributed; null before any attributed block"))
    hashprice: HashpriceSummary = Field(description="Hashprice from the chain's last blocks")
    groups: dict[str, str] = Field(description="Pool slug → parent pool slug (configured)")
    group_work_share: dict[str, float] | None = Field(default=None, description=(
        "2016-block work share per parent pool (0..1); present only when groups are configured"))


# ---- the snapshot ------------------------------------------------------------------------------


class SiteUtilisation(_Strict):
    """A region's power band ÷ the energised mining capacity of the site registry there."""

    region: str = Field(description="ISO 3166-1 or 3166-2 code")
    mining_capacity_w: float = Field(description=(
        "Energised mining capacity of the registry's (public companies') sites there, W"))
    utilisation: PowerBand = Field(description=(
        "power_w's lower/best/upper ÷ mining_capacity_w (ratio; above 1: more power than the "
        "listed public miners' capacity, as the registry lists only public companies)"))


class SnapshotInputs(_Strict):
    """What the leader read: per compacted-shares partition, the offset and evaluation time."""

    partitions: dict[str, int] = Field(description=(
        "Partition → next offset of the compacted-shares topic its partial covers"))
    evaluated_at: dict[str, float] = Field(description=(
        "Partition → time its partial was evaluated at (event time), Unix seconds"))


class EstimateSnapshot(_Strict):
    """What ``GET /v1/estimates/current`` returns and what the ``estimates`` topic carries."""

    type: Literal["estimate"] = Field(description="Always estimate")
    as_of: float = Field(description=(
        "Event time the estimate describes (the latest partial's evaluation time), Unix s"))
    published_at: float = Field(description="Wall-clock time the leader built it, Unix s")
    window_s: float = Field(description="Headline share window, s")
    stale: bool = Field(description=(
        "True when no input event arrived within the staleness limit (leader), or the "
        "snapshot is older than it (API)"))
    max_event_ts: float = Field(description="Latest event time merged into it, Unix s")
    network: NetworkEntry = Field(description="The network as a whole")
    regions: list[RegionEntry] = Field(description="Countries (and ZZ), largest share first")
    subdivisions: list[RegionEntry] = Field(description=(
        "ISO 3166-2 subdivisions the sample locates, largest share first; shares are of the "
        "whole sample"))
    pools: PoolsSection = Field(description="Pools: hashrate from blocks, luck, validation")
    site_utilisation: list[SiteUtilisation] = Field(description=(
        "Regions (countries, then subdivisions) with both a power band and registry capacity"))
    inputs: SnapshotInputs | None = Field(default=None, description=(
        "Partition offsets the leader merged; added when it publishes (absent from the pure "
        "builder's output)"))
