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
# But coverage does move: hashers switch pools over days (0.40 → 0.36 in a week is ordinary), and a
# shock that hits only unsampled pools moves c at once (−10 % of their hashrate: c × 1.06). Neither
# is detectable in a day: a 6 % change of c needs ~3,700 blocks to stand out of binomial noise. So
# ĉ is a local-level estimate that forgets: each block weighs exp(−age / memory), the steady-state
# filter of a drifting log c, and its interval is the sampling error of that weighted share
# (Wilson on the Kish effective count, ≈ 2 × memory blocks). A shorter memory follows a change
# sooner and is noisier; in a steady world the interval's coverage does not depend on it (the
# Kish count scales the error with it), only its width does. 120 blocks (20 h) is the longest
# memory whose 95 % interval held the truth after a 10 % loss in the unsampled pools in at least
# 90 % + 2 standard errors of the checks on the tuning seeds (92.05 ± 0.88 % over 400 worlds of
# seed 2; 150 blocks: 91.35 ± 0.94 %, 200: 89.85 ± 1.06 %); BENCHMARKS.md, "Network coverage,
# calibrated". As a local-level filter it is the steady-state gain of a random walk of c with
# variance c(1 − c)/120² per block, ≈ 0.05 a day: more than coverage drifts, because a shock
# moves c at once and only the width can cover what the blocks cannot show yet.
DEFAULT_COVERAGE_MEMORY_BLOCKS = 120.0
# The recent blocks tested against the older ones of the window for a change of coverage large
# enough to see (two-proportion z); beyond DEFAULT_SHIFT_Z ĉ is taken from the recent blocks only.
DEFAULT_SHIFT_RECENT_BLOCKS = 144
DEFAULT_SHIFT_Z = 3.0
# How far the network's log-hashrate wanders per second, used to age the block estimate: it
# describes the mean over its window, whose midpoint lies span/2 before the newest block. 5 % per
# √day covers daily curtailment, drift and moderate shocks; a larger step is not covered by it, but
# then the block estimate weighs little anyway next to the share-based one.
DEFAULT_LOG_DRIFT_VAR_PER_S = 0.05**2 / 86400.0
# When the share-based and the block-based estimates disagree, by how many standard errors of
# their difference before the interval is scaled by that disagreement (the Birge ratio). While
# both stated errors are right the disagreement is |N(0, 1)|: scaling whenever it exceeds 1 (the
# textbook rule) widens a third of the intervals of a world where nothing is wrong, and took the
# steady world's coverage to 97 % (BENCHMARKS.md, "Network coverage, calibrated"). Beyond the
# 95 % quantile the gap is evidence that an error is understated (typically ĉ lagging a change of
# coverage); below it, it is the noise the errors already describe.
DEFAULT_DISAGREEMENT_Z = Z95

EstimateSource = Literal["fused", "shares", "blocks"]
CoverageStatus = Literal["stable", "shifted", "short_history"]

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

    `sampled_work_share` is the estimate ĉ (work-weighted, and age-weighted when discounted) that
    the nowcast divides by; `fraction` is the plain block-count fraction (sampled blocks / blocks)
    of the window, equal to it when all works are equal and nothing is discounted; `ci95` is the
    Wilson interval for ĉ; `blocks` is the window length and `effective_blocks` the Kish count
    (Σw)²/Σw² the interval rests on.
    """

    fraction: float
    ci95: tuple[float, float]
    blocks: int
    sampled_work_share: float
    effective_blocks: float | None = None


def _wilson_interval(share: float, n: float) -> tuple[float, float]:
    z2 = Z95 * Z95
    denom = 1.0 + z2 / n
    centre = (share + z2 / (2.0 * n)) / denom
    half = Z95 / denom * math.sqrt(share * (1.0 - share) / n + z2 / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _in_sample(pools: Sequence[str], sampled_pools: Collection[str]) -> npt.NDArray[np.bool_]:
    return np.fromiter((p in sampled_pools for p in pools), dtype=bool, count=len(pools))


def _weighted_coverage(in_sample: npt.NDArray[np.bool_], weights: FloatArray) -> Coverage | None:
    """ĉ = Σ sampled weight / Σ weight, with Wilson on the Kish effective block count."""
    total = float(weights.sum())
    if weights.size == 0 or total <= 0.0:
        return None
    work_share = float(weights[in_sample].sum()) / total
    effective_blocks = total * total / float(np.square(weights).sum())
    return Coverage(
        fraction=float(in_sample.mean()),
        ci95=_wilson_interval(work_share, effective_blocks),
        blocks=int(weights.size),
        sampled_work_share=work_share,
        effective_blocks=effective_blocks,
    )


def _checked_works(pools: Sequence[str], works: npt.ArrayLike) -> FloatArray:
    work_arr = np.asarray(works, dtype=np.float64)
    if work_arr.ndim != 1 or work_arr.size != len(pools):
        raise ValueError("pools and works must have the same length")
    return work_arr


def coverage_from_blocks(
    pools: Sequence[str], works: npt.ArrayLike, sampled_pools: Collection[str]
) -> Coverage | None:
    """Coverage ĉ of the sampled pools over the blocks given, every block weighed alike.

    Each block is the sampled pools' with probability c (their share of the hashrate), so the
    count is binomial. The interval is Wilson's (no quantile function needed, close to nominal
    from a few blocks on, and never outside [0, 1]), applied to the work-weighted share with the
    Kish effective block count (Σw)²/Σw², which is exactly Wilson on the count when all works are
    equal (within one difficulty period they are). None when there is no block or no work.
    Right only while c stays put over the window; the nowcast uses `assess_coverage`.
    """
    work_arr = _checked_works(pools, works)
    return _weighted_coverage(_in_sample(pools, sampled_pools), work_arr)


def discounted_coverage(
    pools: Sequence[str],
    works: npt.ArrayLike,
    sampled_pools: Collection[str],
    memory_blocks: float = DEFAULT_COVERAGE_MEMORY_BLOCKS,
) -> Coverage | None:
    """ĉ now, with each block (oldest first) weighed by its work × exp(−age / memory_blocks).

    The steady-state local-level filter of a drifting c: it follows a drift or a jump within
    about `memory_blocks` blocks, where the plain share of a 2016-block window lags by a week.
    The interval is the weighted share's binomial error (Wilson on the Kish count): the price of
    forgetting is a wider interval, paid whether or not c moves, because a move of a few percent
    cannot be told from noise before the filter has followed it anyway.
    """
    if memory_blocks <= 0.0:
        raise ValueError(f"memory_blocks must be positive, got {memory_blocks}")
    work_arr = _checked_works(pools, works)
    ages = np.arange(work_arr.size - 1, -1, -1, dtype=np.float64)
    return _weighted_coverage(_in_sample(pools, sampled_pools),
                              work_arr * np.exp(-ages / memory_blocks))


@dataclass(frozen=True)
class CoverageShift:
    """The sampled pools' block share over the recent blocks against the older ones (z-test)."""

    recent: float
    older: float
    recent_blocks: int
    older_blocks: int
    z: float


def coverage_shift(
    pools: Sequence[str],
    works: npt.ArrayLike,
    sampled_pools: Collection[str],
    recent_blocks: int = DEFAULT_SHIFT_RECENT_BLOCKS,
) -> CoverageShift | None:
    """Two-proportion z of the recent blocks' sampled (work) share against the older blocks'.

    Under a constant c both are binomial shares of independent blocks, so z is standard normal;
    |z| of 3 or more says c changed inside the window. None when there are not at least as many
    older blocks as recent ones, or one side has no work.
    """
    if recent_blocks < 1:
        raise ValueError(f"recent_blocks must be at least 1, got {recent_blocks}")
    work_arr = _checked_works(pools, works)
    if work_arr.size < 2 * recent_blocks:
        return None
    in_sample = _in_sample(pools, sampled_pools)
    recent = _weighted_coverage(in_sample[-recent_blocks:], work_arr[-recent_blocks:])
    older = _weighted_coverage(in_sample[:-recent_blocks], work_arr[:-recent_blocks])
    pooled = _weighted_coverage(in_sample, work_arr)
    if recent is None or older is None or pooled is None:
        return None
    assert recent.effective_blocks is not None and older.effective_blocks is not None
    p = pooled.sampled_work_share
    se = math.sqrt(p * (1.0 - p) * (1.0 / recent.effective_blocks + 1.0 / older.effective_blocks))
    diff = recent.sampled_work_share - older.sampled_work_share
    z = diff / se if se > 0.0 else 0.0
    return CoverageShift(recent=recent.sampled_work_share, older=older.sampled_work_share,
                         recent_blocks=recent.blocks, older_blocks=older.blocks, z=z)


@dataclass(frozen=True)
class CoverageAssessment:
    """The ĉ the nowcast divides by, the window's plain share, the shift test, and a verdict.

    `status`: "stable" (no change seen; ĉ is the discounted share), "shifted" (the recent blocks
    differ from the older ones beyond the z threshold; ĉ from the recent blocks only, with their
    wider interval), "short_history" (too few blocks to test; ĉ discounted over what there is).
    """

    coverage: Coverage
    long_window: Coverage
    shift: CoverageShift | None
    status: CoverageStatus
    memory_blocks: float


def assess_coverage(
    pools: Sequence[str],
    works: npt.ArrayLike,
    sampled_pools: Collection[str],
    *,
    memory_blocks: float = DEFAULT_COVERAGE_MEMORY_BLOCKS,
    recent_blocks: int = DEFAULT_SHIFT_RECENT_BLOCKS,
    shift_z: float = DEFAULT_SHIFT_Z,
) -> CoverageAssessment | None:
    """ĉ for the nowcast from the coverage window (oldest block first): discounted, unless the
    recent blocks show a change, then from them alone. None when there is no block or no work."""
    long_window = coverage_from_blocks(pools, works, sampled_pools)
    discounted = discounted_coverage(pools, works, sampled_pools, memory_blocks)
    if long_window is None or discounted is None:
        return None
    shift = coverage_shift(pools, works, sampled_pools, recent_blocks)
    status: CoverageStatus
    coverage = discounted
    if shift is None:
        status = "short_history"
    elif abs(shift.z) > shift_z:
        status = "shifted"
        recent = coverage_from_blocks(pools[-recent_blocks:],
                                      _checked_works(pools, works)[-recent_blocks:],
                                      sampled_pools)
        coverage = recent or discounted
    else:
        status = "stable"
    return CoverageAssessment(coverage=coverage, long_window=long_window, shift=shift,
                              status=status, memory_blocks=memory_blocks)


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
    #: |log(share-based / block-based)| over its standard error when both fed the estimate: the
    #: recent block rate against the nowcast.
    block_disagreement_z: float | None = None
    #: What the standard error was scaled by for that disagreement (1: not scaled).
    disagreement_scale: float = 1.0


def _log_var_from_ci(lower: float, upper: float) -> float:
    return ((math.log(upper) - math.log(lower)) / (2.0 * Z95)) ** 2


def _share_based(sample_hashrate_hs: float | None, sample_se_hs: float | None,
                 coverage: Coverage | None) -> tuple[float, float] | None:
    """H_S / ĉ and the variance of its log, when the sample and ĉ allow it."""
    if (sample_hashrate_hs is None or sample_hashrate_hs <= 0.0 or coverage is None
            or coverage.sampled_work_share <= 0.0 or coverage.ci95[0] <= 0.0):
        return None
    sample_rel_se = (sample_se_hs or 0.0) / sample_hashrate_hs
    var = sample_rel_se**2 + _log_var_from_ci(*coverage.ci95)
    return sample_hashrate_hs / coverage.sampled_work_share, var


def nowcast_network_hashrate(
    sample_hashrate_hs: float | None,
    sample_se_hs: float | None,
    coverage: Coverage | None,
    blocks: BlockHashrate | None,
    *,
    log_drift_var_per_s: float = DEFAULT_LOG_DRIFT_VAR_PER_S,
    disagreement_z: float = DEFAULT_DISAGREEMENT_Z,
) -> NetworkEstimate | None:
    """Fuse H_S / ĉ with GetNetworkHashPS by inverse-variance weighting on log-hashrate.

    Share-based: log H = log H_S − log ĉ with variance (SE_S/H_S)² + var(log ĉ), the latter from
    the width of ĉ's interval on log scale. Block-based: variance from the width of its exact
    interval, plus the drift the network can make between the block window's midpoint and now
    (`log_drift_var_per_s` · span/2), because a 120-block mean describes the last ~20 hours.
    When the two disagree by more than their stated errors allow (|log ratio| over the root of
    the summed variances above `disagreement_z`, 1.96: rarer than 1 in 20 while the errors are
    right), those errors are too small, typically because the sampled pools' share of the network
    moved after ĉ's window began; the standard error is then scaled by that ratio (the Birge
    ratio), which leaves the estimate itself unchanged.

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
    if (from_shares := _share_based(sample_hashrate_hs, sample_se_hs, coverage)) is not None:
        estimates.append(from_shares)
        sources.extend(("shares", "coverage"))
        used_coverage = coverage.sampled_work_share if coverage else None
    if blocks is not None and blocks.hashrate_hs > 0.0:
        var = _log_var_from_ci(*blocks.ci95_hs) + log_drift_var_per_s * blocks.span_s / 2.0
        estimates.append((blocks.hashrate_hs, var))
        sources.append("blocks")
    if not estimates:
        return None
    weights = [1.0 / var for _, var in estimates]
    se_log = math.sqrt(1.0 / sum(weights))
    disagreement: float | None = None
    scale = 1.0
    if len(estimates) == 1:
        hashrate = estimates[0][0]  # exactly the one input, not exp(log(x))
    else:
        (h_shares, v_shares), (h_blocks, v_blocks) = estimates
        log_h = sum(w * math.log(h) for w, (h, _) in zip(weights, estimates, strict=True))
        hashrate = math.exp(log_h / sum(weights))
        disagreement = abs(math.log(h_shares / h_blocks)) / math.sqrt(v_shares + v_blocks)
        if disagreement > disagreement_z:
            scale = disagreement
            se_log *= scale
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
        block_disagreement_z=disagreement,
        disagreement_scale=scale,
    )


def interval_note(assessment: CoverageAssessment | None, estimate: NetworkEstimate | None) -> str:
    """Why the network interval is as wide as it is, in a sentence or three, for the snapshot."""
    if estimate is None:
        return "no estimate: neither a share sample with coverage nor blocks"
    parts: list[str] = []
    if assessment is not None and estimate.coverage is not None:
        cov = assessment.coverage
        parts.append(
            f"coverage ĉ = {cov.sampled_work_share:.3f} [{cov.ci95[0]:.3f}, {cov.ci95[1]:.3f}]")
        shift = assessment.shift
        if assessment.status == "shifted" and shift is not None:
            parts.append(
                f"shifted: the sampled pools found {shift.recent:.3f} of the last "
                f"{shift.recent_blocks} blocks' work against {shift.older:.3f} of the "
                f"{shift.older_blocks} before (z = {shift.z:+.1f}), so ĉ comes from the recent "
                "blocks only and the interval is wider")
        elif assessment.status == "short_history":
            parts.append(f"only {assessment.long_window.blocks} blocks: no test for a change "
                         "of coverage yet")
        else:
            parts.append(
                f"blocks weighed by exp(-age/{assessment.memory_blocks:g}) so that a drift or a "
                "shock in unsampled pools is followed within about that many blocks; a change "
                "younger than that is only partly in the estimate, which the interval allows for"
                + (f" (z of the last {shift.recent_blocks} blocks against the older "
                   f"{shift.z:+.1f})" if shift is not None else ""))
    elif "blocks" in estimate.sources:
        parts.append("from blocks only (no share sample or no coverage): a mean over the last "
                     "blocks, wide")
    z = estimate.block_disagreement_z
    if z is not None and estimate.disagreement_scale > 1.0:
        parts.append(f"the last blocks' rate and the share-based estimate differ by {z:.1f} "
                     f"standard errors, so the interval is scaled by "
                     f"{estimate.disagreement_scale:.2f}")
    return "; ".join(parts)
