"""The step from the sample's regional shares to the network's: heterogeneity, clustering,
pool weights, and the account-concentration sums proxies report."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from streams.core.account_concentration import (
    AccountConcentration,
    batch_concentration,
    pair_concentration,
)
from streams.core.network_shares import (
    DEFAULT_ACCOUNT_CONCENTRATION,
    HETEROGENEITY_PRIOR_KAPPA,
    HETEROGENEITY_PRIOR_POOLS,
    NetworkContext,
    clustering_variance,
    heterogeneity_variance,
    network_context,
    network_share_intervals,
    share_uncertainties,
    unsampled_inverse_pools,
    weights_variance,
)
from streams.core.regions import Z95, region_shares
from streams.models.chain import ChainSummary


@dataclass(frozen=True)
class Sample:
    hashrate_hs: float
    se_hs: float


def _two_pools_opposite() -> dict[tuple[str, str], Sample]:
    """Pool a: 80 % US, 20 % CN; pool b the reverse; equal sizes, tiny sampling error."""
    return {("a", "US"): Sample(80.0, 0.01), ("a", "CN"): Sample(20.0, 0.01),
            ("b", "US"): Sample(20.0, 0.01), ("b", "CN"): Sample(80.0, 0.01)}


def test_pools_that_disagree_widen_the_interval_to_the_unsampled_mix() -> None:
    """The sample says US 50 % ± almost nothing; the other half of the network is one pool whose
    mix could be either sampled pool's: the network interval must be wide, the sampling one not.
    (Fails on the old behaviour, where share_ci95 was the sampling interval.)"""
    samples = _two_pools_opposite()
    shares = region_shares(samples)
    context = NetworkContext(coverage=0.5, unsampled_blocks={"c": 100.0},
                             concentration={k: 0.0 for k in samples})
    wide, parts = network_share_intervals(shares, samples, context)
    us = wide["US"]
    assert us.share == pytest.approx(0.5)
    assert us.sampling_ci95 == shares["US"].share_ci95
    assert us.sampling_ci95[1] - us.sampling_ci95[0] < 1e-3
    # τ² = (1·0.18 + ν₀·κ·0.25) / (1 + ν₀); between = 1/n_u + Σw̃² = 1 + 0.5; (1 − c)² = 0.25.
    tau2 = (0.18 + HETEROGENEITY_PRIOR_POOLS * HETEROGENEITY_PRIOR_KAPPA * 0.25) / (
        1 + HETEROGENEITY_PRIOR_POOLS)
    assert parts["US"].heterogeneity == pytest.approx(math.sqrt(0.25 * tau2 * 1.5), rel=1e-3)
    assert us.share_ci95[0] == pytest.approx(0.5 - Z95 * us.share_se)
    # Were the unsampled pool like pool a (US 80 %), the network share would be 65 %: inside.
    assert us.share_ci95[0] < 0.35 and us.share_ci95[1] > 0.65


def test_whole_network_sampled_leaves_only_sampling_error() -> None:
    samples = _two_pools_opposite()
    shares = region_shares(samples)
    wide, parts = network_share_intervals(shares, samples, NetworkContext(coverage=1.0))
    for code, entry in wide.items():
        assert parts[code].heterogeneity == 0.0 and parts[code].clustering == 0.0
        assert entry.share_ci95 == pytest.approx(shares[code].share_ci95)


def test_two_agreeing_pools_keep_the_prior_floor() -> None:
    """Two pools with the same mix do not prove the rest of the network has it: τ² keeps
    ν₀/(k − 1 + ν₀) of the prior; more agreeing pools shrink it."""
    share = 0.3
    prior = HETEROGENEITY_PRIOR_KAPPA * share * (1 - share)
    two = heterogeneity_variance(np.array([0.3, 0.3]), np.zeros(2), np.array([0.5, 0.5]), share)
    assert two == pytest.approx(prior * HETEROGENEITY_PRIOR_POOLS / (1 + HETEROGENEITY_PRIOR_POOLS))
    ten = heterogeneity_variance(np.full(10, 0.3), np.zeros(10), np.full(10, 0.1), share)
    assert 0 < ten < two
    assert heterogeneity_variance(np.array([0.3]), np.zeros(1), np.ones(1), share) == prior


def test_sampling_noise_is_not_taken_for_heterogeneity() -> None:
    """Pools that differ only by their sampling noise: the DerSimonian–Laird correction removes
    it, leaving (nearly) the prior."""
    rng = np.random.default_rng(3)
    share, k, sd = 0.2, 40, 0.02
    weights = np.full(k, 1 / k)
    estimates = [heterogeneity_variance(share + rng.normal(0, sd, k), np.full(k, sd**2), weights,
                                        share) for _ in range(200)]
    prior_part = HETEROGENEITY_PRIOR_POOLS * HETEROGENEITY_PRIOR_KAPPA * share * (1 - share) / (
        k - 1 + HETEROGENEITY_PRIOR_POOLS)
    assert np.mean(estimates) < prior_part + 0.15 * sd**2


def test_clustering_variance_matches_farms_drawn_at_random() -> None:
    """Farms of log-normal size, each at a sampled pool with probability c: the variance of the
    sample's share around the network's share is (1 − c)·Σx²/X² through the ratio's gradient,
    with Σx² from the sampled farms (what proxies report)."""
    rng = np.random.default_rng(7)
    c, draws = 0.4, 3000
    region = rng.lognormal(0, 1.5, 60)  # a lumpy region
    rest = rng.lognormal(0, 1.5, 600) * 0.2  # the rest of the world, finer-grained
    network_share = region.sum() / (region.sum() + rest.sum())
    errors, predicted = [], []
    for _ in range(draws):
        in_r = rng.random(region.size) < c
        in_rest = rng.random(rest.size) < c
        x_r, x_rest = region[in_r].sum(), rest[in_rest].sum()
        if x_r <= 0:
            continue
        share = x_r / (x_r + x_rest)
        errors.append(share - network_share)
        hashrates = np.array([x_r, x_rest])
        hhi = np.array([np.square(region[in_r]).sum() / x_r**2,
                        np.square(rest[in_rest]).sum() / x_rest**2])
        predicted.append(clustering_variance(hashrates, hhi, np.array([1.0, 0.0]), share, 1 - c))
    assert np.var(errors) == pytest.approx(np.mean(predicted), rel=0.2)


def test_pairs_without_a_report_get_the_conservative_default() -> None:
    samples = {("a", "US"): Sample(60.0, 0.01), ("a", "CN"): Sample(40.0, 0.01)}
    shares = region_shares(samples)
    reported = share_uncertainties(shares, samples, NetworkContext(
        coverage=0.5, concentration={k: 0.001 for k in samples}))
    silent = share_uncertainties(shares, samples, NetworkContext(coverage=0.5))
    assert silent["US"].clustering > 5 * reported["US"].clustering
    expected = math.sqrt(0.5 * DEFAULT_ACCOUNT_CONCENTRATION * (60**2 * 0.4**2 + 40**2 * 0.6**2)
                         / 100**2)
    assert silent["US"].clustering == pytest.approx(expected)


def test_pool_weights_variance_matches_multinomial_blocks() -> None:
    rng = np.random.default_rng(11)
    shares_true = np.array([0.3, 0.15, 0.55])  # two sampled pools and the rest
    mixes = np.array([0.9, 0.1])
    blocks = 2016
    draws = rng.multinomial(blocks, shares_true, size=20000)[:, :2] / blocks
    estimates = (draws @ mixes) / draws.sum(axis=1)
    share = float(shares_true[:2] @ mixes / shares_true[:2].sum())
    assert weights_variance(mixes, shares_true[:2], share, blocks) == pytest.approx(
        np.var(estimates), rel=0.1)
    assert weights_variance(np.array([0.4, 0.4]), shares_true[:2], 0.4, blocks) == 0.0


def test_pool_weighted_shares_carry_the_weights_error() -> None:
    samples = _two_pools_opposite()
    shares = region_shares(samples, weighting="pool_weighted", pool_weights={"a": 0.3, "b": 0.2})
    context = NetworkContext(coverage=0.5, pool_block_shares={"a": 0.3, "b": 0.2}, blocks=2016)
    parts = share_uncertainties(shares, samples, context, weighting="pool_weighted")
    assert parts["US"].pool_weights > 0
    pooled = share_uncertainties(region_shares(samples), samples, context)
    assert pooled["US"].pool_weights == 0.0


def test_unsampled_pools_count_from_their_blocks() -> None:
    assert unsampled_inverse_pools({"x": 50, "y": 50}, 0.5) == pytest.approx(0.5)
    assert unsampled_inverse_pools({}, 0.5) == 1.0  # nothing said: one pool
    assert unsampled_inverse_pools({}, 1.0) == 0.0


def test_context_from_the_chain_summary() -> None:
    chain = ChainSummary(pool_blocks={"a": 30, "b": 20, "unknown": 50},
                         pool_work={"a": 3.0, "b": 2.0, "unknown": 5.0},
                         coverage_pools=["a"] * 30 + ["b"] * 20 + ["unknown"] * 50)
    context = network_context(chain, 0.3, (0.2, 0.4), {"a"},
                              {("a", "US"): (0.5, 1.0, 1.0)})
    assert context.unsampled_blocks == {"b": 20.0, "unknown": 50.0}
    assert context.pool_block_shares["a"] == pytest.approx(0.3)
    assert context.blocks == 100
    assert context.coverage_se == pytest.approx(0.2 / (2 * Z95))
    assert context.concentration[("a", "US")] == pytest.approx(
        (0.5 + DEFAULT_ACCOUNT_CONCENTRATION * 1.0) / 2.0)


# ---- account concentration --------------------------------------------------------------------


def test_batch_concentration_is_unbiased_for_few_shares() -> None:
    """Shares fall to accounts in proportion to their hashrate; (A − Q)/(D² − Q) averages to
    Σπ² even with five shares a batch, where the naive A/D² is far off."""
    rng = np.random.default_rng(5)
    pi = np.array([0.5, 0.3, 0.1, 0.1])
    difficulties = np.array([1.0, 2.0, 4.0])
    n = 20000
    d = rng.choice(difficulties, size=(n, 5))
    accounts = rng.choice(pi.size, size=(n, 5), p=pi)
    per_account = np.zeros((n, pi.size))
    np.add.at(per_account, (np.repeat(np.arange(n), 5), accounts.ravel()), d.ravel())
    a, total, squares = (np.square(per_account).sum(axis=1), d.sum(axis=1),
                         np.square(d).sum(axis=1))
    values = [batch_concentration(float(t), float(q), float(x))
              for t, q, x in zip(total, squares, a, strict=True)]
    estimates = [v for v in values if v is not None]
    naive = a / total**2
    truth = float(np.square(pi).sum())
    assert np.mean(estimates) == pytest.approx(truth, rel=0.03)
    assert np.mean(naive) > truth * 1.2
    assert batch_concentration(3.0, 9.0, 9.0) is None  # one share: nothing to say


def test_tracker_weights_batches_by_work_and_forgets_old_ones() -> None:
    tracker = AccountConcentration(bucket_s=60.0, window_s=600.0)
    key = ("a", "US")
    tracker.add(key, 100.0, 10.0, 10.0, 10.0 + 0.5 * 90.0)  # HHI 0.5, D = 10
    tracker.add(key, 110.0, 30.0, 30.0, None)  # no report
    ((pool, region, weighted, reported, unreported),) = tracker.rows(120.0)
    assert (pool, region) == key
    assert (weighted, reported, unreported) == pytest.approx((5.0, 10.0, 30.0))
    assert pair_concentration((weighted, reported, unreported), 0.1) == pytest.approx(
        (5.0 + 0.1 * 30.0) / 40.0)
    restored = AccountConcentration.from_state(tracker.to_state())
    assert restored.rows(120.0) == tracker.rows(120.0)
    tracker.expire(1000.0)
    assert tracker.rows(1000.0) == [] and tracker.cells == {}
