"""From each region's share of the sample to its share of the network, with an honest interval.

`region_shares` gives each region's share of the *sampled* pools' hashrate and a sampling-only
interval. The network's share differs from it for three more reasons, each a variance added
here (delta method, independent parts, ±1.96 SE):

* **pool weights** (``weighting="pool_weighted"`` only): each pool's weight is its share of the
  last blocks, a multinomial count, not an exact share;
* **between-pool heterogeneity**: the unsampled part of the network (1 − ĉ) has a regional mix of
  its own. Pools' mixes are modelled as random effects around the network's (variance τ² per
  region); the unsampled part, made of n_u pools (effective number from their blocks), differs
  from the sampled pools' weighted mean by τ²·(1/n_u + Σw̃²). τ² is the pools' observed spread
  (DerSimonian–Laird, net of sampling noise) shrunk toward a prior κ·s(1−s) worth ν₀ pools, so
  two or three pools that happen to agree do not claim the rest of the network agrees;
* **clustering**: a region's hashrate is a finite number of mining accounts (farms). If each sits
  at a sampled pool with probability ĉ, extrapolating the sample to the network has relative
  variance (1 − ĉ)·HHI, with HHI the sampled accounts' concentration (Σ of squared work shares,
  reported by proxies in ``share_batch.account_difficulty_sq_sum``). Pairs without that report
  are given ``DEFAULT_ACCOUNT_CONCENTRATION`` (conservative: as if ten equal accounts).

``pooled_heterogeneity`` pools the spread over regions (κ̂ per unit s(1 − s)): what
``streams.core.unobserved_regions`` bounds a region the sample does not see with.

Lumpy farms are one cause of pools' mixes differing, so the spread between pools already holds
part of the clustering and adding both overlaps. The sum is kept on purpose: the concentration
is itself estimated from the sampled accounts only, and with heavy-tailed farm sizes it is
smallest exactly when the largest farm is missing from the sample (measured: with the larger of
the two alone, lumpy regions of 5–40 % were covered 79–89 % of the time).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from streams.core.account_concentration import pair_concentration
from streams.core.regions import Z95, Level, RegionShare, SampleLike, Weighting, country_of
from streams.models.chain import ChainSummary

FloatArray = npt.NDArray[np.float64]
Key = tuple[str, str]

#: HHI assumed for a (pool, region) whose batches carry no account concentration: as if the
#: region's hashrate at that pool were ten equal accounts.
DEFAULT_ACCOUNT_CONCENTRATION = 0.1
#: Prior between-pool variance of a region's share s: κ·s(1 − s) (Dirichlet mixes of
#: concentration 1/κ − 1), worth ν₀ pools against the observed spread.
HETEROGENEITY_PRIOR_KAPPA = 0.01
HETEROGENEITY_PRIOR_POOLS = 2.0


@dataclass(frozen=True)
class NetworkContext:
    """What the step from sample to network needs besides the sample itself.

    ``coverage``/``coverage_se``: ĉ, the sampled pools' share of the network (None: unknown,
    taken as 0, every share extrapolated). ``unsampled_blocks``: blocks (or work) of each pool
    outside the sample over the coverage window; unattributed blocks count as one pool.
    ``pool_block_shares`` and ``blocks``: each pool's share of those blocks and their number
    (the pool weights' uncertainty, for ``pool_weighted``). ``concentration``: HHI of the mining
    accounts per (pool, region), where proxies reported it.
    """

    coverage: float | None = None
    coverage_se: float = 0.0
    unsampled_blocks: Mapping[str, float] = field(default_factory=dict)
    pool_block_shares: Mapping[str, float] = field(default_factory=dict)
    blocks: int = 0
    concentration: Mapping[Key, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ShareUncertainty:
    """A region's network-share standard error, by source (share units)."""

    sampling: float
    pool_weights: float
    heterogeneity: float
    clustering: float

    @property
    def total(self) -> float:
        return math.sqrt(self.sampling**2 + self.pool_weights**2 + self.heterogeneity**2
                         + self.clustering**2)


def observed_spread(mixes: FloatArray, mix_variances: FloatArray, weights: FloatArray
                    ) -> tuple[int, float]:
    """The pools used and their weighted spread of one region's mix net of sampling noise
    (DerSimonian–Laird; 0 with fewer than two pools)."""
    used = weights > 0
    k = int(used.sum())
    if k < 2:
        return k, 0.0
    w = weights[used] / weights[used].sum()
    m, v = mixes[used], mix_variances[used]
    mean = float(w @ m)
    spread = float(w @ np.square(m - mean))
    noise = float(w @ ((1.0 - w) * v))
    return k, max(0.0, (spread - noise) / (1.0 - float(w @ w)))


def shrunk_to_prior(pools: int, observed: float, prior: float) -> float:
    """The observed value worth ``pools − 1``, the prior worth ν₀ pools."""
    if pools < 2:
        return prior
    return ((pools - 1) * observed + HETEROGENEITY_PRIOR_POOLS * prior) / (
        pools - 1 + HETEROGENEITY_PRIOR_POOLS)


def heterogeneity_variance(mixes: FloatArray, mix_variances: FloatArray, weights: FloatArray,
                           share: float) -> float:
    """τ² of one region: the pools' weighted spread net of sampling noise, shrunk to the prior.

    ``mixes[p]`` is pool p's share of its hashrate in the region, ``mix_variances[p]`` its
    sampling variance, ``weights`` the pools' normalised weights in the estimate."""
    pools, observed = observed_spread(mixes, mix_variances, weights)
    return shrunk_to_prior(pools, observed, HETEROGENEITY_PRIOR_KAPPA * share * (1.0 - share))


def unsampled_inverse_pools(unsampled_blocks: Mapping[str, float], coverage: float | None) -> float:
    """1/n_u, the unsampled part's effective number of pools (Kish); 1 when nothing says."""
    counts = np.array([float(v) for v in unsampled_blocks.values() if v > 0])
    if counts.size == 0:
        return 0.0 if coverage is not None and coverage >= 1.0 else 1.0
    return float(np.square(counts).sum() / counts.sum() ** 2)


def clustering_variance(hashrates: FloatArray, concentrations: FloatArray, in_region: FloatArray,
                        share: float, unsampled: float) -> float:
    """Var of the share from extrapolating lumpy accounts: each pair j adds (1 − ĉ)·X_j²·HHI_j
    to its region's total, through the gradient of X_r / X."""
    total = float(hashrates.sum())
    if total <= 0.0:
        return 0.0
    lumps = np.square(hashrates) * concentrations
    inside = float(in_region @ lumps)
    outside = float(lumps.sum()) - inside
    return unsampled * (inside * (1.0 - share) ** 2 + outside * share**2) / total**2


def weights_variance(mixes: FloatArray, block_shares: FloatArray, share: float,
                     blocks: int) -> float:
    """Var of Σ w_p m_p / Σ w_p from multinomial block shares w over ``blocks`` blocks."""
    total = float(block_shares.sum())
    if blocks <= 0 or total <= 0.0:
        return 0.0
    gradient = (mixes - share) / total
    return max(0.0, (float(block_shares @ np.square(gradient))
                     - float(block_shares @ gradient) ** 2) / blocks)


def _pool_mixes(samples: Mapping[Key, SampleLike], codes: list[str], level: Level
                ) -> tuple[list[str], FloatArray, FloatArray, FloatArray]:
    """Pools, their hashrate [p, code] and its variance rolled up to ``level``, and each
    pool's total over all its regions."""
    pools = sorted({pool for pool, _ in samples})
    row = {p: i for i, p in enumerate(pools)}
    col = {c: i for i, c in enumerate(codes)}
    hashrate = np.zeros((len(pools), len(codes)))
    variance = np.zeros_like(hashrate)
    totals = np.zeros(len(pools))
    for (pool, region), sample in samples.items():
        totals[row[pool]] += float(sample.hashrate_hs)
        code = country_of(region) if level == "country" else region
        if code in col:
            hashrate[row[pool], col[code]] += float(sample.hashrate_hs)
            variance[row[pool], col[code]] += float(sample.se_hs) ** 2
    return pools, hashrate, variance, totals


def _weights(pools: list[str], totals: FloatArray, weighting: Weighting,
             block_shares: Mapping[str, float]) -> FloatArray:
    if weighting == "pool_weighted":
        raw = np.array([float(block_shares.get(p, 0.0)) for p in pools]) * (totals > 0)
    else:
        raw = totals.copy()
    return raw / raw.sum() if raw.sum() > 0 else raw


def _mixes_and_weights(samples: Mapping[Key, SampleLike], codes: list[str], level: Level,
                       weighting: Weighting, context: NetworkContext
                       ) -> tuple[list[str], FloatArray, FloatArray, FloatArray, FloatArray]:
    """Pools, each pool's mix [p, code] and its sampling variance, pool totals, and the
    pools' normalised weights in the estimate."""
    pools, hashrate, variance, totals = _pool_mixes(samples, codes, level)
    safe = np.where(totals > 0, totals, 1.0)[:, None]
    weights = _weights(pools, totals, weighting, context.pool_block_shares)
    return pools, hashrate / safe, variance / np.square(safe), totals, weights


def heterogeneity_factor(context: NetworkContext, weights: FloatArray) -> float:
    """(1 − ĉ)²·(1/n_u + Σw̃²): what turns a between-pool variance τ² into the variance of the
    network's share about the sample's (ĉ's own variance added to (1 − ĉ)²)."""
    coverage = min(max(context.coverage or 0.0, 0.0), 1.0)
    unsampled_sq = (1.0 - coverage) ** 2 + context.coverage_se**2
    return unsampled_sq * (unsampled_inverse_pools(context.unsampled_blocks, context.coverage)
                           + float(weights @ weights))


@dataclass(frozen=True)
class PooledHeterogeneity:
    """How much pools' regional mixes differ, pooled over every listed region.

    ``kappa``: κ̂ = Σ τ̂²_r / Σ s_r(1 − s_r), the pools' observed spread per unit of s(1 − s)
    (0: every pool mixes alike; 1: every pool mines in one region only), shrunk toward the prior
    κ = 0.01 worth ν₀ pools like each region's τ². ``factor``: ``heterogeneity_factor``. Their
    product is the network-share variance per unit s(1 − s) that a region of true share s has
    about what the sample shows, whether or not the sample shows it at all."""

    kappa: float
    factor: float

    @property
    def scale(self) -> float:
        return self.kappa * self.factor


def pooled_heterogeneity(
    shares: Mapping[str, RegionShare], samples: Mapping[Key, SampleLike],
    context: NetworkContext, *, level: Level = "country", weighting: Weighting = "pooled",
) -> PooledHeterogeneity:
    """κ̂ from the listed regions' between-pool spreads (see ``PooledHeterogeneity``)."""
    codes = sorted(shares)
    _, mixes, mix_var, _, weights = _mixes_and_weights(samples, codes, level, weighting, context)
    used, spread, scale = 0, 0.0, 0.0
    for i, code in enumerate(codes):
        used, observed = observed_spread(mixes[:, i], mix_var[:, i], weights)
        spread += observed
        scale += shares[code].share * (1.0 - shares[code].share)
    observed_kappa = min(1.0, spread / scale) if scale > 0 else 0.0
    return PooledHeterogeneity(
        kappa=shrunk_to_prior(used, observed_kappa, HETEROGENEITY_PRIOR_KAPPA),
        factor=heterogeneity_factor(context, weights))


def share_uncertainties(
    shares: Mapping[str, RegionShare], samples: Mapping[Key, SampleLike],
    context: NetworkContext, *, level: Level = "country", weighting: Weighting = "pooled",
) -> dict[str, ShareUncertainty]:
    """Each region's network-share SE by source (see the module docstring)."""
    codes = sorted(shares)
    if not codes:
        return {}
    pools, mixes, mix_var, totals, weights = _mixes_and_weights(samples, codes, level,
                                                                weighting, context)
    coverage = min(max(context.coverage or 0.0, 0.0), 1.0)
    network_factor = heterogeneity_factor(context, weights)
    pairs = list(samples)
    pair_hs = np.array([float(samples[k].hashrate_hs) for k in pairs])
    pair_hhi = np.array([context.concentration.get(k, DEFAULT_ACCOUNT_CONCENTRATION)
                         for k in pairs])
    column = {code: i for i, code in enumerate(codes)}
    pair_column = np.array([column.get(country_of(r) if level == "country" else r, -1)
                            for _, r in pairs])
    block_shares = np.array([float(context.pool_block_shares.get(p, 0.0)) for p in pools])
    out = {}
    for i, code in enumerate(codes):
        share = shares[code].share
        tau2 = heterogeneity_variance(mixes[:, i], mix_var[:, i], weights, share)
        in_region = (pair_column == i).astype(np.float64)
        out[code] = ShareUncertainty(
            sampling=shares[code].share_se,
            pool_weights=math.sqrt(weights_variance(
                mixes[:, i], block_shares * (totals > 0), share, context.blocks))
            if weighting == "pool_weighted" else 0.0,
            heterogeneity=math.sqrt(tau2 * network_factor),
            clustering=math.sqrt(clustering_variance(pair_hs, pair_hhi, in_region, share,
                                                     1.0 - coverage)),
        )
    return out


def network_share_intervals(
    shares: Mapping[str, RegionShare], samples: Mapping[Key, SampleLike],
    context: NetworkContext, *, level: Level = "country", weighting: Weighting = "pooled",
) -> tuple[dict[str, RegionShare], dict[str, ShareUncertainty]]:
    """The shares with ``share_ci95``/``share_se`` covering the network's share (the sampling-only
    interval kept in ``sampling_ci95``/``sampling_se``), and each one's SE by source."""
    parts = share_uncertainties(shares, samples, context, level=level, weighting=weighting)
    out = {}
    for code, entry in shares.items():
        se = parts[code].total
        out[code] = replace(
            entry, share_se=se,
            share_ci95=(max(0.0, entry.share - Z95 * se), min(1.0, entry.share + Z95 * se)),
            sampling_ci95=entry.sampling_ci95 or entry.share_ci95,
            sampling_se=entry.share_se if entry.sampling_se is None else entry.sampling_se,
        )
    return out, parts


def network_context(chain: ChainSummary, coverage: float | None, coverage_ci95:
                    tuple[float, float] | None, sampled_pools: Collection[str],
                    concentration: Mapping[Key, tuple[float, float, float]]) -> NetworkContext:
    """The context from the chain summary (``pool_blocks``, ``pool_work``, ``coverage_pools``
    over the coverage window), ĉ and the merged account-concentration sums."""
    pool_blocks, pool_work = chain.pool_blocks, chain.pool_work
    work = sum(float(w) for w in pool_work.values())
    return NetworkContext(
        coverage=coverage,
        coverage_se=(coverage_ci95[1] - coverage_ci95[0]) / (2 * Z95) if coverage_ci95 else 0.0,
        unsampled_blocks={p: float(n) for p, n in pool_blocks.items() if p not in sampled_pools},
        pool_block_shares={p: float(w) / work for p, w in pool_work.items()} if work else {},
        blocks=len(chain.coverage_pools),
        concentration={key: pair_concentration(row, DEFAULT_ACCOUNT_CONCENTRATION)
                       for key, row in concentration.items()},
    )
