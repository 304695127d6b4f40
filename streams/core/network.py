"""Network hashrate: from blocks (slow, unbiased), from the share sample (fast), and both fused.

Blocks (METHOD.md §2) are the only direct evidence of the whole network's hashrate, but a block
arrives every ten minutes, so any block estimate averages many hours and carries Poisson noise
(±9 % at 120 blocks). The share sample (§1) is fast and precise but sees only the sampled pools, a
fraction c of the network that the blocks themselves reveal: the share of recent block work those
pools found. The nowcast (§3) extrapolates the sample by ĉ and fuses the result with the block
estimate on log-hashrate, with each estimate's uncertainty stated, and says which sources fed it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

from streams.core.intervals import gamma_quantile
from streams.core.units import HASHES_PER_DIFFICULTY

Z95 = 1.959963984540054
TARGET_BLOCK_INTERVAL_S = 600.0
BLOCKS_PER_DAY = 86400.0 / TARGET_BLOCK_INTERVAL_S
# Pool coverage moves slowly (pools gain or lose hashers over weeks), while its binomial noise falls
# as 1/sqrt(blocks): one difficulty period (~2 weeks) gives ±2.7 % (1σ, relative) at c = 0.4.
DEFAULT_COVERAGE_WINDOW_BLOCKS = 2016
# How far the network's log-hashrate wanders per second, used to age the block estimate: it
# describes the mean over its window, whose midpoint lies span/2 before the newest block. 5 % per
# √day covers daily curtailment, drift and moderate shocks; a larger step is not covered by it, but
# then the block estimate weighs little anyway next to the share-based one.
DEFAULT_LOG_DRIFT_VAR_PER_S = 0.05**2 / 86400.0

EstimateSource = Literal["fused", "shares", "blocks"]

FloatArray = npt.NDArray[np.float64]


# ---- from blocks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockHashrate:
    """Bitcoin Core's GetNetworkHashPS over `blocks` blocks, with an exact 95% interval."""

    hashrate_hs: float
    ci95_hs: tuple[float, float]
    blocks: int
    span_s: float


def network_hashrate_from_blocks(
    times: npt.ArrayLike, works: npt.ArrayLike, nblocks: int = 120
) -> BlockHashrate | None:
    """GetNetworkHashPS: work of the last `nblocks` blocks / span of the nblocks + 1 newest headers.

    `times` and `works` describe consecutive blocks of the best chain, oldest first. As in Bitcoin
    Core (`src/rpc/mining.cpp`), the span is max − min header time over the nblocks + 1 newest
    headers (header times are not monotonic), the work is chainwork(tip) − chainwork(tip − nblocks)
    (the oldest header only marks the start), and fewer blocks than asked are used when the chain
    given is shorter. None when there are fewer than two headers or all their times are equal
    (Core answers 0 there, which is no hashrate estimate).

    Interval: with constant hashrate the span of k block intervals is a sum of k exponential waits,
    so λ·span ~ Gamma(k, 1) exactly (the count is fixed, the span is random). Hence
    λ ∈ [G⁻¹(0.025; k), G⁻¹(0.975; k)] / span, i.e. [χ²(0.025; 2k), χ²(0.975; 2k)] / (2·span):
    Garwood's bounds for a fixed window would use shape k + 1 above, which is conservative here.
    Header timestamps are only roughly right (max − min is used for that reason), so real
    coverage is nominal only up to that timestamp noise.
    """
    if nblocks < 1:
        raise ValueError(f"nblocks must be at least 1, got {nblocks}")
    time_arr = np.asarray(times, dtype=np.float64)
    work_arr = np.asarray(works, dtype=np.float64)
    if time_arr.shape != work_arr.shape or time_arr.ndim != 1:
        raise ValueError("times and works must be 1-d arrays of the same length")
    if time_arr.size < 2:
        return None
    lookup = min(nblocks, time_arr.size - 1)
    window_times = time_arr[-(lookup + 1) :]
    span = float(window_times.max() - window_times.min())
    if span <= 0.0:
        return None
    work = float(work_arr[-lookup:].sum())
    hashrate = work / span
    lower_factor, upper_factor = _fixed_count_rate_factors(lookup)
    ci = (hashrate * lower_factor, hashrate * upper_factor)
    return BlockHashrate(hashrate_hs=hashrate, ci95_hs=ci, blocks=lookup, span_s=span)


@lru_cache(maxsize=256)
def _fixed_count_rate_factors(count: int) -> tuple[float, float]:
    """95% bounds of the true rate relative to the estimate count/span, for a fixed count."""
    return gamma_quantile(0.025, count) / count, gamma_quantile(0.975, count) / count


def network_hashrate_from_daily(blk_cnt: npt.ArrayLike, diff_mean: npt.ArrayLike) -> FloatArray:
    """Coin Metrics' daily hashrate in H/s: (BlkCnt / 144) · DiffMean · 2³² / 600.

    Blocks found in the day relative to the 144 expected, times the hashrate that the mean
    difficulty implies at one block per 600 s. Accepts scalars or arrays.
    """
    blocks = np.asarray(blk_cnt, dtype=np.float64)
    difficulty = np.asarray(diff_mean, dtype=np.float64)
    return (blocks / BLOCKS_PER_DAY) * difficulty * HASHES_PER_DIFFICULTY / TARGET_BLOCK_INTERVAL_S


# ---- coverage of the share sample --------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """Share of the network's recent block work found by the sampled pools.

    `sampled_work_share` is the estimate ĉ (work-weighted) that the nowcast divides by; `fraction`
    is the plain block-count fraction (sampled blocks / blocks), equal to it when all works in the
    window are equal; `ci95` is the Wilson interval for ĉ; `blocks` is the window length.
    """

    fraction: float
    ci95: tuple[float, float]
    blocks: int
    sampled_work_share: float


def _wilson_interval(share: float, n: float) -> tuple[float, float]:
    z2 = Z95 * Z95
    denom = 1.0 + z2 / n
    centre = (share + z2 / (2.0 * n)) / denom
    half = Z95 / denom * math.sqrt(share * (1.0 - share) / n + z2 / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def coverage_from_blocks(
    pools: Sequence[str], works: npt.ArrayLike, sampled_pools: Collection[str]
) -> Coverage | None:
    """Coverage ĉ of the sampled pools over the blocks given (use a long window, e.g. 2016).

    Each block is the sampled pools' with probability c (their share of the hashrate), so the
    count is binomial. The interval is Wilson's (no quantile function needed, close to nominal
    from a few blocks on, and never outside [0, 1]), applied to the work-weighted share with the
    Kish effective block count (Σw)²/Σw², which is exactly Wilson on the count when all works are
    equal (within one difficulty period they are). None when there is no block or no work.
    """
    work_arr = np.asarray(works, dtype=np.float64)
    if work_arr.ndim != 1 or work_arr.size != len(pools):
        raise ValueError("pools and works must have the same length")
    total = float(work_arr.sum())
    if work_arr.size == 0 or total <= 0.0:
        return None
    in_sample = np.fromiter((p in sampled_pools for p in pools), dtype=bool, count=len(pools))
    work_share = float(work_arr[in_sample].sum()) / total
    effective_blocks = total * total / float(np.square(work_arr).sum())
    return Coverage(
        fraction=float(in_sample.mean()),
        ci95=_wilson_interval(work_share, effective_blocks),
        blocks=int(work_arr.size),
        sampled_work_share=work_share,
    )


# ---- the nowcast -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkEstimate:
    """Network hashrate now, its 95% interval and standard error on log scale, and its sources.

    `source` is "fused" when shares and blocks both fed it; `sources` lists the inputs used
    ("shares", "coverage", "blocks"); `coverage` is ĉ when the share sample was extrapolated.
    """

    hashrate_hs: float
    ci95_hs: tuple[float, float]
    se_log: float
    source: EstimateSource
    sources: tuple[str, ...]
    coverage: float | None
    sample_hashrate_hs: float | None


def _log_var_from_ci(lower: float, upper: float) -> float:
    return ((math.log(upper) - math.log(lower)) / (2.0 * Z95)) ** 2


def nowcast_network_hashrate(
    sample_hashrate_hs: float | None,
    sample_se_hs: float | None,
    coverage: Coverage | None,
    blocks: BlockHashrate | None,
    *,
    log_drift_var_per_s: float = DEFAULT_LOG_DRIFT_VAR_PER_S,
) -> NetworkEstimate | None:
    """Fuse H_S / ĉ with GetNetworkHashPS by inverse-variance weighting on log-hashrate.

    Share-based: log H = log H_S − log ĉ with variance (SE_S/H_S)² + var(log ĉ), the latter from
    the width of ĉ's interval on log scale. Block-based: variance from the width of its exact
    interval, plus the drift the network can make between the block window's midpoint and now
    (`log_drift_var_per_s` · span/2), because a 120-block mean describes the last ~20 hours.
    When the two disagree by more than their stated errors allow (squared difference over summed
    variances above 1), those errors are too small, typically because the sampled pools' share of
    the network moved after ĉ's window began; the standard error is then scaled by the square
    root of that ratio (the Birge ratio), which leaves the estimate itself unchanged.

    Why stateless weighting and not a Kalman filter over time: the share estimate's error is
    dominated by the error of ĉ, which is common to every share measurement of the next days, so a
    filter treating successive measurements as independent would average it away on paper and
    report intervals far too narrow; the block estimate is already a moving mean of 120 blocks.
    Each call combines two current estimates with honest variances, needs no state to persist and
    restarts anywhere. Degrades to whichever source is usable; None when neither is.
    """
    estimates: list[tuple[float, float]] = []  # (hashrate, variance of its log)
    sources: list[str] = []
    used_coverage: float | None = None
    if (
        sample_hashrate_hs is not None
        and sample_hashrate_hs > 0.0
        and coverage is not None
        and coverage.sampled_work_share > 0.0
        and coverage.ci95[0] > 0.0
    ):
        sample_rel_se = (sample_se_hs or 0.0) / sample_hashrate_hs
        var = sample_rel_se**2 + _log_var_from_ci(*coverage.ci95)
        estimates.append((sample_hashrate_hs / coverage.sampled_work_share, var))
        sources.extend(("shares", "coverage"))
        used_coverage = coverage.sampled_work_share
    if blocks is not None and blocks.hashrate_hs > 0.0:
        var = _log_var_from_ci(*blocks.ci95_hs) + log_drift_var_per_s * blocks.span_s / 2.0
        estimates.append((blocks.hashrate_hs, var))
        sources.append("blocks")
    if not estimates:
        return None
    weights = [1.0 / var for _, var in estimates]
    se_log = math.sqrt(1.0 / sum(weights))
    if len(estimates) == 1:
        hashrate = estimates[0][0]  # exactly the one input, not exp(log(x))
    else:
        (h_shares, v_shares), (h_blocks, v_blocks) = estimates
        log_h = sum(w * math.log(h) for w, (h, _) in zip(weights, estimates, strict=True))
        hashrate = math.exp(log_h / sum(weights))
        consistency = math.log(h_shares / h_blocks) ** 2 / (v_shares + v_blocks)
        se_log *= math.sqrt(max(1.0, consistency))
    source: EstimateSource
    if len(estimates) == 2:
        source = "fused"
    elif "blocks" in sources:
        source = "blocks"
    else:
        source = "shares"
    return NetworkEstimate(
        hashrate_hs=hashrate,
        ci95_hs=(hashrate * math.exp(-Z95 * se_log), hashrate * math.exp(Z95 * se_log)),
        se_log=se_log,
        source=source,
        sources=tuple(sources),
        coverage=used_coverage,
        sample_hashrate_hs=sample_hashrate_hs,
    )
