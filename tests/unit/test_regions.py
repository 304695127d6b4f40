"""Region codes, regional shares (pooled, pool-weighted, suspect regions), their intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams.core.regions import (
    RegionShare,
    country_of,
    is_subdivision,
    normalise_region,
    region_name,
    region_shares,
    regional_hashrates,
    subdivisions_of,
)


@dataclass(frozen=True)
class Sample:
    hashrate_hs: float
    se_hs: float


def samples_of(table: dict[tuple[str, str], float], rel_se: float = 0.01) -> dict:
    return {key: Sample(value, value * rel_se) for key, value in table.items()}


# ---- codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("US", "US"), ("us", "US"), (" us-tx ", "US-TX"), ("cn-zj", "CN-ZJ"), ("zz", "ZZ")],
)
def test_normalise_region_accepts_iso_codes(raw: str, expected: str) -> None:
    assert normalise_region(raw) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("XX", "not an assigned ISO 3166-1"),
        ("USA", "neither ISO 3166-1 alpha-2"),
        ("U1", "neither ISO 3166-1 alpha-2"),
        ("US-XX", "not an ISO 3166-2 subdivision"),
        ("US-", "not an ISO 3166-2 subdivision"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_normalise_region_names_the_problem(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        normalise_region(raw)


def test_normalise_region_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="string"):
        normalise_region(840)  # type: ignore[arg-type]


def test_country_of_rolls_subdivisions_up() -> None:
    assert country_of("US-TX") == "US"
    assert country_of("cn-sc") == "CN"
    assert country_of("KZ") == "KZ"
    assert country_of("ZZ") == "ZZ"
    assert is_subdivision("US-TX") and not is_subdivision("US") and not is_subdivision("ZZ")


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("US", "United States"),
        ("US-TX", "Texas"),
        ("ZZ", "Unknown"),
        ("KZ", "Kazakhstan"),
        ("IR", "Iran"),
        ("de", "Germany"),
        ("CA-QC", "Quebec"),
    ],
)
def test_region_name(code: str, name: str) -> None:
    assert region_name(code) == name


def test_subdivisions_of_lists_a_countrys_subdivisions() -> None:
    entries = ["US-TX", "US", "CN-ZJ", "us-ny", "US-TX", "ZZ"]
    assert subdivisions_of("us", entries) == ["US-NY", "US-TX"]
    assert subdivisions_of("KZ", entries) == []
    with pytest.raises(ValueError, match="subdivision, not a country"):
        subdivisions_of("US-TX", entries)


# ---- shares: hand examples -------------------------------------------------------------------


def test_pooled_shares_and_rollup_by_hand() -> None:
    samples = samples_of(
        {("a", "US-TX"): 30.0, ("a", "us"): 10.0, ("b", "US-TX"): 20.0, ("b", "CN-SC"): 40.0}
    )
    country = region_shares(samples)
    assert set(country) == {"US", "CN"}
    assert country["US"].share == pytest.approx(0.6)
    assert country["CN"].share == pytest.approx(0.4)
    assert country["US"].sample_hashrate_hs == pytest.approx(60.0)
    assert country["US"].sample_se_hs == pytest.approx(math.sqrt(0.3**2 + 0.1**2 + 0.2**2))
    sub = region_shares(samples, level="subdivision")
    assert {k: round(v.share, 12) for k, v in sub.items()} == {
        "US": 0.1,
        "US-TX": 0.5,
        "CN-SC": 0.4,
    }


def test_pool_weighting_by_hand() -> None:
    # Pool a mines 75 % of blocks: mix US 3/4, CN 1/4. Pool b 25 %: US 1/4, KZ 3/4.
    # Weighted: US = .75·.75 + .25·.25 = .625, CN = .75·.25 = .1875, KZ = .25·.75 = .1875.
    # Pooled, pool b (5x larger in the sample) dominates: US 80/240, CN 10/240, KZ 150/240.
    samples = samples_of(
        {("a", "US"): 30.0, ("a", "CN"): 10.0, ("b", "US"): 50.0, ("b", "KZ"): 150.0}
    )
    weights = {"a": 3.0, "b": 1.0, "not-sampled": 5.0}  # renormalised over sampled pools
    weighted = region_shares(samples, weighting="pool_weighted", pool_weights=weights)
    assert weighted["US"].share == pytest.approx(0.625)
    assert weighted["CN"].share == pytest.approx(0.1875)
    assert weighted["KZ"].share == pytest.approx(0.1875)
    pooled = region_shares(samples)
    assert pooled["US"].share == pytest.approx(80.0 / 240.0)
    assert pooled["KZ"].share == pytest.approx(150.0 / 240.0)


def test_pool_without_weight_is_left_out() -> None:
    samples = samples_of({("a", "US"): 30.0, ("a", "CN"): 10.0, ("c", "RU"): 500.0})
    result = region_shares(samples, weighting="pool_weighted", pool_weights={"a": 0.4})
    assert result["US"].share == pytest.approx(0.75)
    assert result["RU"].share == 0.0
    assert result["RU"].sample_hashrate_hs == 500.0


def test_ccaf_zhejiang_rule_by_hand() -> None:
    # Zhejiang 10 spread over Sichuan 30 and Xinjiang 60 in proportion: +3.33 and +6.67.
    samples = samples_of(
        {("p", "CN-ZJ"): 10.0, ("p", "CN-SC"): 30.0, ("p", "CN-XJ"): 60.0, ("p", "US"): 100.0}
    )
    sub = region_shares(samples, level="subdivision", suspect_regions={"cn-zj": "cn"})
    assert sub["CN-ZJ"].share == 0.0
    assert sub["CN-ZJ"].sample_hashrate_hs == 10.0  # what the sample showed stays visible
    assert sub["CN-SC"].share == pytest.approx((30.0 + 10.0 / 3.0) / 200.0)
    assert sub["CN-XJ"].share == pytest.approx((60.0 + 20.0 / 3.0) / 200.0)
    assert sub["US"].share == pytest.approx(0.5)
    country = region_shares(samples, suspect_regions={"CN-ZJ": "CN"})
    assert country["CN"].share == pytest.approx(0.5)


def test_global_suspects_spread_after_local_ones() -> None:
    # ZZ (unknown, 20) spread over everything else in proportion to the map after Zhejiang's fix.
    samples = samples_of(
        {("p", "CN-ZJ"): 20.0, ("p", "CN-SC"): 20.0, ("p", "US-TX"): 40.0, ("p", "ZZ"): 20.0}
    )
    sub = region_shares(samples, level="subdivision", suspect_regions={"CN-ZJ": "CN", "ZZ": None})
    assert sub["CN-SC"].share == pytest.approx(0.5)
    assert sub["US-TX"].share == pytest.approx(0.5)
    assert sub["ZZ"].share == 0.0 and sub["CN-ZJ"].share == 0.0


def test_suspect_without_other_regions_in_its_area_stays() -> None:
    samples = samples_of({("p", "CN-ZJ"): 20.0, ("p", "US"): 80.0})
    sub = region_shares(samples, level="subdivision", suspect_regions={"CN-ZJ": "CN"})
    assert sub["CN-ZJ"].share == pytest.approx(0.2)


def test_suspect_country_includes_its_subdivisions() -> None:
    samples = samples_of({("p", "SC"): 10.0, ("p", "SC-01"): 10.0, ("p", "US"): 80.0})
    result = region_shares(samples, level="subdivision", suspect_regions={"SC": None})
    assert result["US"].share == pytest.approx(1.0)
    assert result["SC"].share == 0.0 and result["SC-01"].share == 0.0


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"weighting": "pool_weighted"}, "needs pool_weights"),
        ({"weighting": "by-vibes"}, "weighting must be"),
        ({"level": "continent"}, "level must be"),
        ({"suspect_regions": {"CN-ZJ": "US"}}, "must be a subdivision of its area"),
        ({"suspect_regions": {"CN": "CN"}}, "must be a subdivision of its area"),
        ({"suspect_regions": {"CN-ZJ": "CN-SC"}}, "area must be a country"),
        ({"suspect_regions": {"CN-QQ": "CN"}}, "not an ISO 3166-2"),
        ({"weighting": "pool_weighted", "pool_weights": {"p": -1.0}}, "pool weight"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, problem: str) -> None:
    samples = samples_of({("p", "CN-ZJ"): 20.0, ("p", "US"): 80.0})
    with pytest.raises(ValueError, match=problem):
        region_shares(samples, **kwargs)


@pytest.mark.parametrize(
    ("sample", "problem"),
    [(Sample(-1.0, 0.0), "hashrate_hs"), (Sample(math.nan, 0.0), "hashrate_hs"),
     (Sample(1.0, -1.0), "se_hs"), (Sample(1.0, math.inf), "se_hs")],
)  # fmt: skip
def test_bad_samples_are_named(sample: Sample, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        region_shares({("p", "US"): sample})


def test_junk_region_in_samples_is_named() -> None:
    with pytest.raises(ValueError, match="'QQ' is not an assigned"):
        region_shares({("p", "qq"): Sample(1.0, 0.1)})


def test_nothing_to_share_out_gives_empty_result() -> None:
    assert region_shares({}) == {}
    assert region_shares(samples_of({("p", "US"): 0.0})) == {}
    unweighted = samples_of({("p", "US"): 10.0})
    assert region_shares(unweighted, weighting="pool_weighted", pool_weights={"q": 1.0}) == {}


# ---- shares: properties ----------------------------------------------------------------------

CODES = ["US", "US-TX", "US-NY", "CN", "CN-ZJ", "CN-SC", "CN-XJ", "KZ", "ZZ", "DE", "RU-IRK"]
hashrates = st.one_of(st.just(0.0), st.floats(1e10, 1e20))
sample_tables = st.dictionaries(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(CODES)),
    st.tuples(hashrates, st.floats(0.0, 0.2)).map(lambda v: Sample(v[0], v[0] * v[1])),
    min_size=1,
    max_size=20,
)
weight_tables = st.fixed_dictionaries(
    {p: st.one_of(st.just(0.0), st.floats(1e-3, 1.0)) for p in ("a", "b", "c")}
)


def _total(samples: dict) -> float:
    return sum(s.hashrate_hs for s in samples.values())


def _assert_valid(result: dict[str, RegionShare]) -> None:
    assert sum(r.share for r in result.values()) == pytest.approx(1.0, abs=1e-9)
    for entry in result.values():
        assert 0.0 <= entry.share <= 1.0
        low, high = entry.share_ci95
        assert 0.0 <= low <= entry.share + 1e-12 and entry.share - 1e-12 <= high <= 1.0


@settings(max_examples=200, deadline=None)
@given(sample_tables, weight_tables, st.sampled_from(["country", "subdivision"]))
def test_shares_sum_to_one(samples: dict, weights: dict, level: str) -> None:
    pooled = region_shares(samples, level=level)  # type: ignore[arg-type]
    assert bool(pooled) == (_total(samples) > 0.0)
    if pooled:
        _assert_valid(pooled)
    weighted = region_shares(
        samples,
        weighting="pool_weighted",
        pool_weights=weights,
        level=level,  # type: ignore[arg-type]
        suspect_regions={"CN-ZJ": "CN", "ZZ": None},
    )
    if weighted:
        _assert_valid(weighted)


@settings(max_examples=200, deadline=None)
@given(sample_tables)
def test_subdivisions_roll_up_into_their_country(samples: dict) -> None:
    country = region_shares(samples)
    sub = region_shares(samples, level="subdivision")
    for code, entry in country.items():
        parts = [v for k, v in sub.items() if country_of(k) == code]
        assert entry.share == pytest.approx(sum(p.share for p in parts), abs=1e-12)
        assert entry.sample_hashrate_hs == pytest.approx(sum(p.sample_hashrate_hs for p in parts))
    assert all(not is_subdivision(code) for code in country)


@settings(max_examples=200, deadline=None)
@given(sample_tables)
@example({("a", "US"): Sample(1e10, 0.0), ("a", "ZZ"): Sample(2.6691124148447594e17, 0.0)})
def test_suspect_redistribution_keeps_totals_and_proportions(samples: dict) -> None:
    plain = region_shares(samples, level="subdivision")
    if not plain:
        return
    local = region_shares(samples, level="subdivision", suspect_regions={"CN-ZJ": "CN"})
    china = [c for c in plain if country_of(c) == "CN" and c != "CN-ZJ"]
    china_mass = sum(plain[c].share for c in china)
    if "CN-ZJ" in plain and china_mass > 0.0:
        assert local["CN-ZJ"].share == 0.0
        scale = (china_mass + plain["CN-ZJ"].share) / china_mass
        for code in china:  # every other Chinese region grows by the same factor
            assert local[code].share == pytest.approx(plain[code].share * scale, abs=1e-12)
    for code in plain:  # the rest of the world does not notice; China's total is kept
        if country_of(code) != "CN" or "CN-ZJ" not in plain or china_mass == 0.0:
            assert local[code].share == pytest.approx(plain[code].share, abs=1e-12)
    assert region_shares(samples, suspect_regions={"CN-ZJ": "CN"}).keys() == (
        region_shares(samples).keys()
    )
    spread = region_shares(samples, level="subdivision", suspect_regions={"ZZ": None})
    unknown = plain["ZZ"].share if "ZZ" in plain else 0.0
    if 0.0 < unknown < 1.0:
        assert spread["ZZ"].share == 0.0
        # The known regions' own total, not 1 − unknown: that difference cancels catastrophically
        # when nearly everything is unknown (hypothesis found US 1e10 H/s beside ZZ 2.7e17 H/s).
        known = sum(plain[code].share for code in plain if code != "ZZ")
        for code in plain:
            if code != "ZZ":
                expected = plain[code].share / known
                assert spread[code].share == pytest.approx(expected, abs=1e-9)


# ---- intervals -------------------------------------------------------------------------------


def _numeric_se(samples: dict, region: str, **kwargs: object) -> float:
    """SE of a share by finite differences of region_shares itself (checks the Jacobian)."""
    base = region_shares(samples, **kwargs)[region].share  # type: ignore[arg-type]
    total = 0.0
    for key, sample in samples.items():
        step = sample.hashrate_hs * 1e-6
        bumped = dict(samples)
        bumped[key] = Sample(sample.hashrate_hs + step, sample.se_hs)
        moved = region_shares(bumped, **kwargs)[region].share  # type: ignore[arg-type]
        total += ((moved - base) / step * sample.se_hs) ** 2
    return math.sqrt(total)


def test_delta_method_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    codes = ["US-TX", "US", "CN-ZJ", "CN-SC", "CN-XJ", "KZ", "ZZ"]
    samples = {
        (pool, code): Sample(float(h), float(h) * 0.05)
        for pool in ("a", "b", "c")
        for code, h in zip(codes, rng.uniform(1.0, 10.0, len(codes)), strict=True)
    }
    configs: list[dict[str, object]] = [
        {},
        {"level": "subdivision"},
        {"weighting": "pool_weighted", "pool_weights": {"a": 0.5, "b": 0.3, "c": 0.2}},
        {"suspect_regions": {"CN-ZJ": "CN", "ZZ": None}, "level": "subdivision"},
        {
            "suspect_regions": {"CN-ZJ": "CN", "ZZ": None},
            "weighting": "pool_weighted",
            "pool_weights": {"a": 0.5, "b": 0.3, "c": 0.2},
        },
    ]
    for config in configs:
        result = region_shares(samples, **config)  # type: ignore[arg-type]
        for region, entry in result.items():
            if entry.share == 0.0:
                assert entry.share_se == 0.0
                continue
            assert entry.share_se == pytest.approx(_numeric_se(samples, region, **config), rel=1e-3)


def test_share_intervals_cover_the_truth_on_simulated_poisson_samples() -> None:
    """95 % intervals from compound-Poisson share counts contain the true share 93–97 % of the
    time, pooled, pool-weighted and with a suspect region redistributed."""
    rng = np.random.default_rng(20220105)
    window_s = 300.0
    difficulties = {"a": [2.0**16, 2.0**18], "b": [2.0**20], "c": [2.0**14, 2.0**15]}
    # Expected share counts per window for each (pool, region) and difficulty level: 40–4000.
    expected_counts = {
        "a": {"US-TX": 1500, "US": 400, "CN-ZJ": 300, "CN-SC": 250, "KZ": 800, "DE": 60},
        "b": {"US-TX": 120, "US": 40, "CN-ZJ": 60, "CN-SC": 200, "KZ": 90, "DE": 80},
        "c": {"US-TX": 4000, "US": 900, "CN-ZJ": 1000, "CN-SC": 600, "KZ": 300, "DE": 500},
    }
    weights = {"a": 0.5, "b": 0.2, "c": 0.3}
    true_h = {
        (pool, region): sum(n * d * 2.0**32 / window_s for d in difficulties[pool])
        for pool, counts in expected_counts.items()
        for region, n in counts.items()
    }
    configs: dict[str, dict[str, object]] = {
        "pooled": {},
        "pool_weighted": {"weighting": "pool_weighted", "pool_weights": weights},
        "suspect": {"suspect_regions": {"CN-ZJ": "CN"}, "level": "subdivision"},
    }
    truths = {
        name: region_shares({k: Sample(v, 0.0) for k, v in true_h.items()}, **config)  # type: ignore[arg-type]
        for name, config in configs.items()
    }
    replicates = 2000
    hits = {name: dict.fromkeys(truth, 0) for name, truth in truths.items()}
    for _ in range(replicates):
        samples = {}
        for pool, counts in expected_counts.items():
            for region, n in counts.items():
                diffs = np.array(difficulties[pool])
                drawn = rng.poisson(n, size=diffs.size)
                work = float(np.sum(drawn * diffs)) * 2.0**32
                se = math.sqrt(float(np.sum(drawn * diffs**2))) * 2.0**32 / window_s
                samples[(pool, region)] = Sample(work / window_s, se)
        for name, config in configs.items():
            result = region_shares(samples, **config)  # type: ignore[arg-type]
            for region, truth in truths[name].items():
                low, high = result[region].share_ci95
                hits[name][region] += low <= truth.share <= high
    for name, per_region in hits.items():
        for region, count in per_region.items():
            if truths[name][region].share == 0.0:
                continue  # CN-ZJ after redistribution: exactly 0, interval (0, 0)
            coverage = count / replicates
            assert 0.93 <= coverage <= 0.97, (name, region, coverage)


# ---- regional hashrate -----------------------------------------------------------------------


def test_regional_hashrate_interval_matches_monte_carlo_product() -> None:
    shares = {
        "US": RegionShare("US", 0.4, (0.4 - 1.96 * 0.01, 0.4 + 1.96 * 0.01), 3e20, 1e18, 0.01),
        "ZZ": RegionShare("ZZ", 0.0, (0.0, 0.0), 0.0, 0.0, 0.0),
    }
    network, ci = 1e21, (0.9e21, 1.1e21)
    result = regional_hashrates(shares, network, ci)
    us = result["US"]
    assert us.hashrate_hs == pytest.approx(4e20)
    rng = np.random.default_rng(1)
    draws = rng.normal(0.4, 0.01, 400_000) * rng.normal(network, 0.1e21 / 1.959964, 400_000)
    half_width = (us.hashrate_ci95_hs[1] - us.hashrate_ci95_hs[0]) / 2.0
    assert half_width == pytest.approx(1.959964 * float(np.std(draws)), rel=0.01)
    assert result["ZZ"].hashrate_hs == 0.0
    assert result["ZZ"].hashrate_ci95_hs == (0.0, 0.0)
    assert us.sample_hashrate_hs == 3e20 and us.share_ci95 == shares["US"].share_ci95


def test_regional_hashrate_rejects_bad_network_inputs() -> None:
    with pytest.raises(ValueError, match="network hashrate"):
        regional_hashrates({}, -1.0, (0.0, 1.0))
    with pytest.raises(ValueError, match="lower <= upper"):
        regional_hashrates({}, 1.0, (2.0, 1.0))
