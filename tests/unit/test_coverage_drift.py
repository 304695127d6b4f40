"""Coverage that moves (#14 item 4): discounted ĉ, the recent-against-older test, the note."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streams.core.network import (
    DEFAULT_COVERAGE_MEMORY_BLOCKS,
    BlockHashrate,
    Coverage,
    assess_coverage,
    coverage_from_blocks,
    coverage_shift,
    discounted_coverage,
    interval_note,
    nowcast_network_hashrate,
)

Z95 = 1.959963984540054


def _chain(rng: np.random.Generator, shares: np.ndarray) -> list[str]:
    """One block per entry of ``shares``, the sampled pool's ("s") with that probability."""
    return np.where(rng.random(shares.size) < shares, "s", "o").tolist()


# ---- discounted ĉ ------------------------------------------------------------------------------


def test_discounted_coverage_weighs_blocks_by_age() -> None:
    # memory 1/ln 2: weights 1/4, 1/2, 1 (oldest first); works 1, 1, 2 -> 1/4, 1/2, 2.
    cov = discounted_coverage(["s", "o", "s"], np.array([1.0, 1.0, 2.0]), {"s"},
                              memory_blocks=1.0 / math.log(2.0))
    assert cov is not None
    assert cov.sampled_work_share == pytest.approx(2.25 / 2.75, rel=1e-12)
    assert cov.fraction == pytest.approx(2.0 / 3.0)  # the plain block count, as before
    assert cov.blocks == 3
    assert cov.effective_blocks == pytest.approx(2.75**2 / (0.0625 + 0.25 + 4.0), rel=1e-12)
    lower, upper = cov.ci95
    assert lower < cov.sampled_work_share < upper


def test_discounted_coverage_without_forgetting_is_the_window_share() -> None:
    pools = ["s", "o", "o", "s", "o"] * 40
    works = np.full(200, 7e22)
    plain = coverage_from_blocks(pools, works, {"s"})
    forever = discounted_coverage(pools, works, {"s"}, memory_blocks=math.inf)
    assert plain is not None and forever is not None
    assert forever == plain
    assert plain.effective_blocks == pytest.approx(200.0)


def test_discounted_coverage_counts_about_two_memories_of_blocks() -> None:
    # Kish count of weights ρ^age, age 0..n−1: (1 + ρ)/(1 − ρ) · (1 − ρⁿ)/(1 + ρⁿ) ≈ 2 · memory.
    cov = discounted_coverage(["s", "o"] * 1008, np.ones(2016), {"s"}, memory_blocks=200.0)
    assert cov is not None and cov.effective_blocks is not None
    rho = math.exp(-1 / 200.0)
    rho_n = rho**2016
    assert cov.effective_blocks == pytest.approx(
        (1 + rho) / (1 - rho) * (1 - rho_n) / (1 + rho_n), rel=1e-9)
    assert cov.effective_blocks == pytest.approx(400.0, rel=1e-3)


def test_discounted_coverage_none_and_errors() -> None:
    assert discounted_coverage([], np.array([]), {"s"}) is None
    with pytest.raises(ValueError):
        discounted_coverage(["s"], np.ones(1), {"s"}, memory_blocks=0.0)
    with pytest.raises(ValueError):
        discounted_coverage(["s"], np.ones(2), {"s"})


# ---- the recent-against-older test -------------------------------------------------------------


def test_coverage_shift_is_a_two_proportion_z() -> None:
    # older 300 blocks: 120 sampled (0.40); recent 100: 60 (0.60); pooled 180/400 = 0.45.
    pools = (["s"] * 120 + ["o"] * 180) + (["s"] * 60 + ["o"] * 40)
    shift = coverage_shift(pools, np.ones(400), {"s"}, recent_blocks=100)
    assert shift is not None
    assert shift.recent == pytest.approx(0.6) and shift.older == pytest.approx(0.4)
    assert (shift.recent_blocks, shift.older_blocks) == (100, 300)
    assert shift.z == pytest.approx(0.2 / math.sqrt(0.45 * 0.55 * (1 / 100 + 1 / 300)))
    assert coverage_shift(pools[:150], np.ones(150), {"s"}, recent_blocks=100) is None
    with pytest.raises(ValueError):
        coverage_shift(pools, np.ones(400), {"s"}, recent_blocks=0)


def test_coverage_shift_is_standard_normal_when_nothing_moves() -> None:
    rng = np.random.default_rng(7)
    zs = []
    for _ in range(1000):
        shift = coverage_shift(_chain(rng, np.full(2016, 0.42)), np.ones(2016), {"s"})
        assert shift is not None
        zs.append(shift.z)
    assert abs(float(np.mean(zs))) < 0.1
    assert float(np.std(zs)) == pytest.approx(1.0, abs=0.06)
    assert np.mean(np.abs(zs) > 3.0) < 0.01


# ---- the assessment the nowcast uses ------------------------------------------------------------


def test_assess_coverage_statuses() -> None:
    steady = ["s", "o", "o", "s", "o"] * 400  # 2000 blocks, 0.40 throughout
    stable = assess_coverage(steady, np.ones(2000), {"s"})
    assert stable is not None and stable.status == "stable"
    assert stable.shift is not None and abs(stable.shift.z) < 1.0
    assert stable.long_window.sampled_work_share == pytest.approx(0.4)
    assert stable.coverage.effective_blocks is not None
    assert stable.coverage.effective_blocks < 0.25 * stable.long_window.blocks

    # the sampled pools find 1 in 6 of the last 144 blocks: a change no noise explains
    moved = steady[:-144] + (["s"] + ["o"] * 5) * 24
    shifted = assess_coverage(moved, np.ones(2000), {"s"})
    assert shifted is not None and shifted.status == "shifted"
    assert shifted.shift is not None and shifted.shift.z < -3.0
    assert shifted.coverage == coverage_from_blocks(moved[-144:], np.ones(144), {"s"})

    short = assess_coverage(steady[:200], np.ones(200), {"s"})
    assert short is not None and short.status == "short_history" and short.shift is None
    assert assess_coverage([], np.array([]), {"s"}) is None


def _covers(cov: Coverage | None, truth: float) -> bool:
    return cov is not None and cov.ci95[0] <= truth <= cov.ci95[1]


def test_a_week_of_drift_leaves_the_window_share_behind_but_not_the_assessed_one() -> None:
    """c drifts 0.40 -> 0.36 over the last 1008 blocks of 2016 (the coverage_drift world): the
    plain 2016-block share (the nowcast's ĉ before) holds today's c in under half of the chains,
    the assessed ĉ in ≥ 90 %."""
    rng = np.random.default_rng(11)
    path = np.concatenate([np.full(1008, 0.40), np.linspace(0.40, 0.36, 1008)])
    old_hits = new_hits = 0
    reps = 400
    for _ in range(reps):
        pools = _chain(rng, path)
        old_hits += _covers(coverage_from_blocks(pools, np.ones(2016), {"s"}), 0.36)
        assessed = assess_coverage(pools, np.ones(2016), {"s"})
        new_hits += _covers(assessed.coverage if assessed else None, 0.36)
    assert old_hits / reps < 0.5
    assert new_hits / reps >= 0.9


def test_the_assessed_interval_stays_honest_when_nothing_moves() -> None:
    rng = np.random.default_rng(12)
    reps = 1000
    hits = sum(
        _covers(getattr(assess_coverage(_chain(rng, np.full(2016, 0.42)), np.ones(2016), {"s"}),
                        "coverage", None), 0.42)
        for _ in range(reps))
    assert 0.93 <= hits / reps <= 0.97


# ---- the nowcast and its note --------------------------------------------------------------------


def test_nowcast_reports_how_far_the_block_rate_is_from_the_shares() -> None:
    cov = Coverage(fraction=0.4, ci95=(0.4 * math.exp(-Z95 * 0.03), 0.4 * math.exp(Z95 * 0.03)),
                   blocks=2016, sampled_work_share=0.4)
    blocks_hs = 7.5e20 * math.exp(0.1)
    blocks = BlockHashrate(blocks_hs, (blocks_hs * math.exp(-Z95 * 0.04),
                                       blocks_hs * math.exp(Z95 * 0.04)), 120, 72000.0)
    est = nowcast_network_hashrate(3e20, 0.0, cov, blocks, log_drift_var_per_s=0.0)
    assert est is not None and est.block_disagreement_z == pytest.approx(2.0)
    note = interval_note(None, est)
    assert "differ by 2.0 standard errors" in note and "scaled by 2.00" in note
    alone = nowcast_network_hashrate(3e20, 0.0, cov, None)
    assert alone is not None and alone.block_disagreement_z is None


def test_interval_note_says_why() -> None:
    steady = ["s", "o", "o", "s", "o"] * 400
    moved = steady[:-144] + (["s"] + ["o"] * 5) * 24
    for pools, phrase in ((steady, f"exp(-age/{DEFAULT_COVERAGE_MEMORY_BLOCKS:g})"),
                          (moved, "shifted: the sampled pools found")):
        assessment = assess_coverage(pools, np.ones(2000), {"s"})
        assert assessment is not None
        est = nowcast_network_hashrate(3e20, 0.0, assessment.coverage, None)
        assert phrase in interval_note(assessment, est)
    assert interval_note(None, None).startswith("no estimate")
