"""Regions the sample does not see (or barely sees): the reference list, the pooled
heterogeneity κ̂, the bound on an unseen region's network share, and how the snapshot and the
offline evaluator carry them."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.core.known_regions import parse_known_regions
from streams.core.network_shares import (
    HETEROGENEITY_PRIOR_KAPPA,
    HETEROGENEITY_PRIOR_POOLS,
    NetworkContext,
    PooledHeterogeneity,
    network_share_intervals,
    pooled_heterogeneity,
)
from streams.core.regions import Z95, RegionShare, region_shares
from streams.core.snapshot import history_points, shares_for_detection
from streams.core.unobserved_regions import bounded_shares, unobserved_bound
from streams.models.snapshot import EstimateSnapshot
from streams.sim import worlds as W
from streams.sim.scenario import parse_scenario
from tests.small_scenarios import small_scenario_yaml
from tests.unit.test_snapshot import _build, _sample

DATA = Path(__file__).resolve().parents[2] / "streams" / "data" / "mining_regions.csv"


@dataclass(frozen=True)
class Sample:
    hashrate_hs: float
    se_hs: float


def _single_region_pools() -> dict[tuple[str, str], Sample]:
    """Pool a mines only in the US, pool b only in KZ (equal sizes, tiny sampling error)."""
    return {("a", "US"): Sample(50.0, 0.01), ("b", "KZ"): Sample(50.0, 0.01)}


# ---- the bound ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.0, 1e-4, 0.02, 0.3])
def test_the_bound_is_the_largest_share_within_196_se_of_zero(scale: float) -> None:
    bound = unobserved_bound(scale)
    assert bound == pytest.approx(Z95**2 * scale / (1 + Z95**2 * scale))
    # s² = z²·scale·s(1 − s) holds at the bound, and larger shares are further than 1.96 SE
    assert bound**2 == pytest.approx(Z95**2 * scale * bound * (1 - bound), abs=1e-15)
    above = bound + 0.01
    assert above**2 > Z95**2 * scale * above * (1 - above)


def test_pools_that_mix_alike_give_the_prior_and_single_region_pools_kappa_near_one() -> None:
    alike = {("a", "US"): Sample(60.0, 0.01), ("a", "KZ"): Sample(40.0, 0.01),
             ("b", "US"): Sample(30.0, 0.01), ("b", "KZ"): Sample(20.0, 0.01)}
    context = NetworkContext(coverage=0.5, unsampled_blocks={"c": 100.0})
    pooled = pooled_heterogeneity(region_shares(alike), alike, context)
    # no spread between the pools: only the prior κ = 0.01 worth ν₀ of the 1 + ν₀ pools
    assert pooled.kappa == pytest.approx(HETEROGENEITY_PRIOR_POOLS * HETEROGENEITY_PRIOR_KAPPA
                                         / (1 + HETEROGENEITY_PRIOR_POOLS), rel=1e-3)
    apart = _single_region_pools()
    pooled = pooled_heterogeneity(region_shares(apart), apart, context)
    assert pooled.kappa == pytest.approx((1.0 + HETEROGENEITY_PRIOR_POOLS
                                          * HETEROGENEITY_PRIOR_KAPPA)
                                         / (1 + HETEROGENEITY_PRIOR_POOLS), rel=1e-3)
    # (1 − ĉ)²·(1/n_u + Σw²) = 0.25·(1 + 0.5)
    assert pooled.factor == pytest.approx(0.25 * 1.5)


def test_unseen_known_regions_are_listed_with_the_bound_and_flagged() -> None:
    samples = _single_region_pools()
    shares = region_shares(samples)
    context = NetworkContext(coverage=0.5, unsampled_blocks={"c": 100.0},
                             concentration={k: 0.0 for k in samples})
    intervals, parts = network_share_intervals(shares, samples, context)
    pooled = pooled_heterogeneity(shares, samples, context)
    out, out_parts = bounded_shares(intervals, parts, pooled, ["US", "DE"])
    bound = unobserved_bound(pooled.scale)
    assert 0.2 < bound < 0.5  # half the network unsampled, pools of one country each: wide
    de = out["DE"]
    assert (de.share, de.share_ci95, de.observed) == (0.0, (0.0, bound), False)
    assert de.sampling_ci95 == (0.0, 0.0) and de.interval_basis == "unobserved_bound"
    assert out_parts["DE"].heterogeneity == pytest.approx(bound / Z95)
    assert out["US"].observed and out["US"] == intervals["US"]  # its interval already wider
    assert bounded_shares({}, {}, pooled, ["DE"]) == ({}, {})  # no sample, nothing to go by


def test_a_region_seen_at_a_tiny_share_is_no_better_bounded_than_an_unseen_one() -> None:
    tiny = RegionShare(region="SE", share=0.001, share_ci95=(0.0, 0.003),
                       sample_hashrate_hs=1.0, sample_se_hs=0.1, share_se=0.001)
    pooled = PooledHeterogeneity(kappa=0.5, factor=0.2)
    out, _ = bounded_shares({"SE": tiny}, {}, pooled, ["DE"])
    bound = unobserved_bound(pooled.scale)
    assert out["SE"].share_ci95 == (0.0, bound) and out["DE"].share_ci95 == (0.0, bound)
    assert out["SE"].interval_basis == "unobserved_bound" and out["SE"].observed
    assert out["SE"].share_se == pytest.approx((bound - 0.001) / Z95)


# ---- the reference list --------------------------------------------------------------------------


def test_the_shipped_list_parses_and_every_row_has_a_source_and_a_date() -> None:
    rows = parse_known_regions(DATA.read_text("utf-8"))
    assert {"DE", "IE", "SE", "GE", "US", "CN", "KZ"} <= {r.region for r in rows}
    for row in rows:
        assert row.source.startswith(tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")) and "http" in row.source
        assert datetime.date(2019, 1, 1) <= row.as_of <= datetime.date(2026, 12, 31)


@pytest.mark.parametrize(("row", "field"), [
    ("XX,2021-08-31,1,src,", "region"),
    ("US-TX,2021-08-31,1,src,", "region"),
    ("DE,August,1,src,", "as_of"),
    ("DE,2021-08-31,lots,src,", "share_pct"),
    ("DE,2021-08-31,101,src,", "share_pct"),
    ("DE,2021-08-31,1,,", "source"),
])
def test_a_bad_row_names_its_line_and_field(row: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"line 2, field {field}"):
        parse_known_regions("region,as_of,share_pct,source,note\n" + row + "\n")


def test_a_country_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="DE is listed twice"):
        parse_known_regions("region,as_of,share_pct,source,note\nDE,2021-08-31,,a,\n"
                            "DE,2022-01-31,,b,\n")


# ---- the snapshot and the evaluator --------------------------------------------------------------


def test_the_snapshot_lists_unseen_known_countries_outside_detection_and_history() -> None:
    snapshot = _build(_sample(), known_regions=("DE", "US"))
    served = EstimateSnapshot.model_validate(snapshot).model_dump()
    regions = {r["region"]: r for r in served["regions"]}
    de = regions["DE"]
    assert (de["observed"], de["share"], de["interval_basis"]) == (False, 0.0,
                                                                    "unobserved_bound")
    assert de["share_ci95"][0] == 0.0 and 0.0 < de["share_ci95"][1] < 1.0
    assert de["hashrate_ci95_hs"][1] > 0.0 and de["sample_hashrate_ci95_hs"] is None
    assert regions["US"]["observed"] and served["regions"][-1]["region"] == "DE"
    kappa = served["network"]["region_heterogeneity_kappa"]
    assert HETEROGENEITY_PRIOR_KAPPA < kappa <= 1.0
    assert "DE" not in shares_for_detection(snapshot)
    assert "DE" not in history_points(snapshot, 0.0) and "US" in history_points(snapshot, 0.0)
    assert {r["region"] for r in _build(_sample())["regions"]} == {"US", "KZ", "CN"}


UNSEEN = small_scenario_yaml('{US: 50, "NO": 10, KZ: 40}', antpool_pct=50,
                             foundry_mix="{US: 100}", viabtc_mix="{KZ: 100}",
                             extra="evaluation: {checks: [1h, 2h]}\n")


def test_a_country_only_unsampled_pools_mine_is_served_and_covered() -> None:
    """Norway (10 %) mines only at AntPool, outside the sample: before, the snapshot did not
    list it and the evaluator counted a miss; now it is listed unobserved, its bound holds the
    truth, and the evaluator's band table counts it."""
    report = W.evaluate_worlds(parse_scenario(UNSEEN), 2, seed=5)
    norway = next(c for c in report.shares if c.series == "NO")
    assert norway.n == 4 and norway.missing == 0 and norway.coverage == 1.0
    assert norway.mean_truth == pytest.approx(0.10, abs=0.005)
    band = next(b for b in report.share_bands if b["band"] == [0.05, 0.15])
    assert band["unobserved"] == 4 and band["unobserved_coverage"] == 1.0
    assert band["missing"] == 0
    assert "listed unobserved" in W.format_worlds_report(report)
