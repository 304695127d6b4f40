"""Network hashrate from blocks, pool coverage and the fused nowcast (METHOD.md §2–§3)."""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from streams.core.network import (
    BlockHashrate,
    Coverage,
    coverage_from_blocks,
    network_hashrate_from_blocks,
    network_hashrate_from_daily,
    nowcast_network_hashrate,
)

COINMETRICS_CSV = Path(__file__).resolve().parents[1] / "data/cbeci/coinmetrics_btc_daily.csv"
BENCH_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "nowcast_accuracy.py"
Z95 = 1.959963984540054


# ---- GetNetworkHashPS on hand-built chains ------------------------------------------------------

# Four headers; the tip (2800) is the latest, header 2 (1500) is older-stamped than header 1 (1600).
TIMES = np.array([1200.0, 1600.0, 1500.0, 2800.0])
WORKS = np.array([9.9e30, 1.3e21, 2.6e21, 3.9e21])  # block 0's work must never count


def test_getnetworkhashps_uses_last_n_works_over_max_minus_min_of_n_plus_one_headers() -> None:
    est = network_hashrate_from_blocks(TIMES, WORKS, nblocks=2)
    assert est is not None
    # headers 1..3: span = 2800 − 1500 (the minimum is not the oldest header) = 1300 s;
    # work = blocks 2 and 3 = 6.5e21 → 5e18 H/s.
    assert est.span_s == 1300.0
    assert est.blocks == 2
    assert est.hashrate_hs == pytest.approx(5e18, rel=1e-15)


def test_getnetworkhashps_clips_to_the_chain_given_and_excludes_the_oldest_work() -> None:
    est = network_hashrate_from_blocks(TIMES, WORKS, nblocks=120)
    assert est is not None
    # all 4 headers: span 2800 − 1200 = 1600 s; work of blocks 1..3 = 7.8e21 → 4.875e18 H/s.
    assert est.blocks == 3
    assert est.span_s == 1600.0
    assert est.hashrate_hs == pytest.approx(4.875e18, rel=1e-15)


def test_getnetworkhashps_tip_older_than_its_parent() -> None:
    est = network_hashrate_from_blocks([100.0, 2000.0, 1900.0], [1.0, 3e21, 5e21], nblocks=2)
    assert est is not None
    assert est.span_s == 1900.0  # max 2000 (not the tip) − min 100
    assert est.hashrate_hs == pytest.approx(8e21 / 1900.0, rel=1e-15)


def test_getnetworkhashps_one_block_interval_is_the_exponential_quantiles() -> None:
    # k = 1: span·λ ~ Exp(1), so λ·span ∈ [−ln 0.975, −ln 0.025] = [0.0253178080, 3.6888794541].
    est = network_hashrate_from_blocks([0.0, 600.0], [1.0, 6e23], nblocks=1)
    assert est is not None
    assert est.hashrate_hs == pytest.approx(1e21, rel=1e-15)
    assert est.ci95_hs[0] == pytest.approx(0.0253178080e21, rel=1e-9)
    assert est.ci95_hs[1] == pytest.approx(3.6888794541e21, rel=1e-9)


def test_getnetworkhashps_none_without_a_span() -> None:
    assert network_hashrate_from_blocks([1000.0], [1e21]) is None
    assert network_hashrate_from_blocks([], []) is None
    assert network_hashrate_from_blocks([1000.0, 1000.0, 1000.0], [1e21, 1e21, 1e21]) is None


def test_getnetworkhashps_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        network_hashrate_from_blocks(TIMES, WORKS, nblocks=0)
    with pytest.raises(ValueError):
        network_hashrate_from_blocks(TIMES, WORKS[:3])


@pytest.mark.parametrize(("nblocks", "reps"), [(120, 4000), (6, 4000)])
def test_block_interval_coverage_by_simulation(nblocks: int, reps: int) -> None:
    """Constant hashrate, exponential block intervals: the 95% interval covers 93–97% of runs."""
    rng = np.random.default_rng(7 + nblocks)
    true_hs = 6e20
    work = true_hs * 600.0
    gaps = rng.exponential(600.0, size=(reps, nblocks))
    times = np.concatenate([np.zeros((reps, 1)), np.cumsum(gaps, axis=1)], axis=1)
    works = np.full(nblocks + 1, work)
    below = above = 0
    for row in times:
        est = network_hashrate_from_blocks(row, works, nblocks)
        assert est is not None
        below += true_hs < est.ci95_hs[0]
        above += true_hs > est.ci95_hs[1]
    coverage = 1.0 - (below + above) / reps
    assert 0.93 <= coverage <= 0.97
    assert 0.01 <= below / reps <= 0.04 and 0.01 <= above / reps <= 0.04  # both tails honest


# ---- Coin Metrics daily --------------------------------------------------------------------------


def test_daily_hashrate_reproduces_coinmetrics_hashrate_column() -> None:
    with COINMETRICS_CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 200
    blk_cnt = np.array([float(r["BlkCnt"]) for r in rows])
    diff_mean = np.array([float(r["DiffMean"]) for r in rows])
    published_ths = np.array([float(r["HashRate"]) for r in rows])
    ours_ths = network_hashrate_from_daily(blk_cnt, diff_mean) / 1e12
    np.testing.assert_allclose(ours_ths, published_ths, rtol=1e-13, atol=0.0)


def test_daily_hashrate_one_day_by_hand() -> None:
    # 144 blocks at difficulty 1e12: 4294967296e12 / 600 = 7.15827882666…e18 H/s; 72 blocks: half.
    assert float(network_hashrate_from_daily(144, 1e12)) == pytest.approx(
        7.158278826666666667e18, rel=1e-15
    )
    assert float(network_hashrate_from_daily(72, 1e12)) == pytest.approx(
        3.579139413333333333e18, rel=1e-15
    )


# ---- coverage ------------------------------------------------------------------------------------


def test_coverage_equal_works_is_wilson_on_the_block_count() -> None:
    cov = coverage_from_blocks(["A", "B", "A", "C"], np.full(4, 5e23), {"A", "Z"})
    assert cov is not None
    assert cov.blocks == 4
    assert cov.fraction == 0.5
    assert cov.sampled_work_share == 0.5
    # Wilson, 2 of 4, z = 1.96: centre 0.5, half-width 1.96/(1 + 3.8415/4)·√(1/16 + 3.8415/64).
    assert cov.ci95[0] == pytest.approx(0.150036, abs=2e-5)
    assert cov.ci95[1] == pytest.approx(0.849964, abs=2e-5)


def test_coverage_is_work_weighted_across_a_retarget() -> None:
    cov = coverage_from_blocks(["A", "B", "B", "A"], np.array([1.0, 1.0, 2.0, 2.0]), ["A"])
    assert cov is not None
    assert cov.fraction == 0.5  # 2 of 4 blocks
    assert cov.sampled_work_share == pytest.approx(0.5)  # 3 of 6 work units
    cov2 = coverage_from_blocks(["A", "B", "B", "B"], np.array([3.0, 1.0, 1.0, 1.0]), ["A"])
    assert cov2 is not None
    assert cov2.fraction == 0.25
    assert cov2.sampled_work_share == pytest.approx(0.5)


def test_coverage_none_and_errors() -> None:
    assert coverage_from_blocks([], np.array([]), {"A"}) is None
    with pytest.raises(ValueError):
        coverage_from_blocks(["A"], np.array([1.0, 2.0]), {"A"})


@pytest.mark.parametrize(("blocks", "share"), [(2016, 0.4), (144, 0.1)])
def test_coverage_interval_by_simulation(blocks: int, share: float) -> None:
    rng = np.random.default_rng(blocks)
    reps = 3000
    works = np.full(blocks, 1e23)
    hits = 0
    for _ in range(reps):
        pools = np.where(rng.random(blocks) < share, "s", "o").tolist()
        cov = coverage_from_blocks(pools, works, {"s"})
        assert cov is not None
        hits += cov.ci95[0] <= share <= cov.ci95[1]
    assert 0.93 <= hits / reps <= 0.97


# ---- nowcast: combination rules -----------------------------------------------------------------


def _coverage(c: float, se_log: float) -> Coverage:
    ci = (c * math.exp(-Z95 * se_log), c * math.exp(Z95 * se_log))
    return Coverage(fraction=c, ci95=ci, blocks=2016, sampled_work_share=c)


def _blocks(h: float, se_log: float, span_s: float) -> BlockHashrate:
    ci = (h * math.exp(-Z95 * se_log), h * math.exp(Z95 * se_log))
    return BlockHashrate(hashrate_hs=h, ci95_hs=ci, blocks=120, span_s=span_s)


def test_nowcast_fuses_by_inverse_variance_on_log_scale() -> None:
    est = nowcast_network_hashrate(
        3e20, 0.0, _coverage(0.4, 0.03), _blocks(7.6e20, 0.04, 72000.0), log_drift_var_per_s=0.0
    )
    assert est is not None
    # shares: 3e20 / 0.4 = 7.5e20 with var 0.03²; blocks: 7.6e20 with var 0.04²;
    # weights 0.04²/(0.03² + 0.04²) = 0.64 and 0.36; se = 0.03·0.04/0.05 = 0.024;
    # they agree: ln(7.6/7.5)² / 0.05² = 0.07 < 1, so no inflation.
    assert est.hashrate_hs == pytest.approx(7.5e20**0.64 * 7.6e20**0.36, rel=1e-12)
    assert est.se_log == pytest.approx(0.024, rel=1e-12)
    assert est.ci95_hs[0] == pytest.approx(est.hashrate_hs * math.exp(-Z95 * 0.024), rel=1e-12)
    assert est.ci95_hs[1] == pytest.approx(est.hashrate_hs * math.exp(Z95 * 0.024), rel=1e-12)
    assert est.source == "fused"
    assert est.sources == ("shares", "coverage", "blocks")
    assert est.coverage == 0.4
    assert est.sample_hashrate_hs == 3e20


def test_nowcast_widens_when_the_sources_disagree() -> None:
    blocks_hs = 7.5e20 * math.exp(0.1)  # 0.1 apart on log scale, expected sd of the gap 0.05
    est = nowcast_network_hashrate(
        3e20, 0.0, _coverage(0.4, 0.03), _blocks(blocks_hs, 0.04, 72000.0), log_drift_var_per_s=0.0
    )
    assert est is not None
    assert est.hashrate_hs == pytest.approx(7.5e20 * math.exp(0.36 * 0.1), rel=1e-12)
    assert est.se_log == pytest.approx(0.024 * 2.0, rel=1e-12)  # √(0.1² / 0.05²) = 2


def test_nowcast_share_variance_adds_sample_and_coverage_terms() -> None:
    est = nowcast_network_hashrate(3e20, 3e20 * 0.04, _coverage(0.4, 0.03), None)
    assert est is not None
    assert est.source == "shares"
    assert est.sources == ("shares", "coverage")
    assert est.hashrate_hs == pytest.approx(7.5e20, rel=1e-12)
    assert est.se_log == pytest.approx(0.05, rel=1e-12)  # √(0.04² + 0.03²)


def test_nowcast_ages_the_block_estimate_by_half_its_span() -> None:
    # 0.05² per day of drift, midpoint 10 h back: var = 0.04² + 0.05²·(36000/86400).
    est = nowcast_network_hashrate(
        None, None, None, _blocks(8e20, 0.04, 72000.0), log_drift_var_per_s=0.05**2 / 86400.0
    )
    assert est is not None
    assert est.source == "blocks"
    assert est.sources == ("blocks",)
    assert est.coverage is None
    assert est.hashrate_hs == 8e20
    assert est.se_log == pytest.approx(math.sqrt(0.04**2 + 0.05**2 * 36000.0 / 86400.0))


def test_nowcast_degrades_gracefully() -> None:
    blocks = _blocks(8e20, 0.09, 72000.0)
    # a sample without coverage cannot be extrapolated: blocks only
    only_blocks = nowcast_network_hashrate(3e20, 1e18, None, blocks)
    assert only_blocks is not None and only_blocks.source == "blocks"
    assert only_blocks.sample_hashrate_hs == 3e20  # still reported, as the contract asks
    # an empty sample or a sample of pools that found nothing: blocks only
    for sample, cov in ((0.0, _coverage(0.4, 0.03)), (3e20, _coverage(0.0, 0.03))):
        est = nowcast_network_hashrate(sample, 0.0, cov, blocks)
        assert est is not None and est.source == "blocks"
    assert nowcast_network_hashrate(None, None, None, None) is None
    assert nowcast_network_hashrate(3e20, 1e18, None, None) is None


# ---- nowcast: accuracy on simulated networks with known truth -----------------------------------


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nowcast_accuracy_bench", BENCH_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_simulated_blocks_match_the_simulated_hashrate() -> None:
    """The simulator itself: block work found per day equals the true work done, within Poisson."""
    bench = _load_bench()
    path = bench.simulate_path(np.random.default_rng(3))
    total_work = float(np.sum(path.hashrate_per_minute_hs) * 60.0)
    mean_work = float(np.mean(path.block_work))
    expected_blocks = total_work / mean_work
    assert abs(path.block_work.size - expected_blocks) < 4.0 * math.sqrt(expected_blocks)
    assert 0.35 <= path.true_coverage <= 0.45
    assert abs(path.block_sampled.mean() - path.true_coverage) < 0.04


def test_nowcast_beats_getnetworkhashps_by_3x_at_one_hour() -> None:
    """300 simulated worlds, 84 instants each (every 2 h over a week)."""
    bench = _load_bench()
    summary = bench.evaluate_paths(paths=300, seed=11, step_s=7200.0)
    print(
        f"\nRMSE log: GetNetworkHashPS(120) {summary.rmse_log_blocks_120:.4f}, "
        f"shares/ĉ {summary.rmse_log_shares_over_coverage:.4f}, "
        f"nowcast {summary.rmse_log_nowcast:.4f}, ratio {summary.ratio_blocks_over_nowcast:.2f}, "
        f"nowcast CI95 coverage {summary.ci95_coverage_nowcast:.3f}"
    )
    assert summary.nowcast_source_counts == {"fused": summary.instants}
    assert summary.ratio_blocks_over_nowcast >= 3.0
    assert summary.ci95_coverage_nowcast >= 0.85
    assert abs(summary.bias_log_nowcast) < 0.01
