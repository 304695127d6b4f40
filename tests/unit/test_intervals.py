"""Garwood and compound-Poisson intervals against published tables, 40-digit references and
closed forms that do not share code with the implementation."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.intervals import (
    LARGE_SHAPE,
    compound_poisson_interval,
    gamma_quantile,
    poisson_interval,
    regularized_gamma_pq,
)

# Exact 95 % Poisson limits as printed in the usual tables (e.g. Garwood 1936; Ulm 1990).
TABLE = [
    (0, 0.0, 3.689),
    (1, 0.0253, 5.572),
    (2, 0.2422, 7.225),
    (5, 1.623, 11.67),
    (10, 4.795, 18.39),
    (20, 12.22, 30.89),
    (50, 37.11, 65.92),
    (100, 81.36, 121.63),
]

# (count, lower, upper) computed with mpmath 1.4 at 40 digits: lower = root of
# gammainc(k, 0, x, regularized=True) = 0.025, upper = root of gammainc(k + 1, ...) = 0.975, by
# bisection; for shapes ≥ 1e4 the incomplete gamma was integrated with mpmath.quad instead.
REFERENCE = [
    (0, 0.0, 3.6888794541139354),
    (1, 0.025317807984289877, 5.5716433909388975),
    (2, 0.24220927854396491, 7.2246876677239596),
    (3, 0.6186721228956013, 8.7672730697423248),
    (5, 1.6234863901184206, 11.668332079322668),
    (10, 4.7953886961324337, 18.390356042017777),
    (20, 12.216519585403944, 30.888377902674597),
    (50, 37.110963737461863, 65.918766664336814),
    (100, 81.363991250923141, 121.62679379242639),
    (1000, 938.97301840769522, 1063.952136016302),
    (0.3, 3.1856790317391661e-6, 4.293777110863578),
    (2.5, 0.41560580674333122, 8.0063821373146609),
    (37.2, 26.219171629072732, 51.2314607373586),
    (200000.0, 199124.42499654117, 200878.47149996287),
    (1000000.0, 998040.9833402939, 1001961.9119454322),
]


@pytest.mark.parametrize(("count", "lower", "upper"), TABLE)
def test_garwood_matches_published_table(count: int, lower: float, upper: float) -> None:
    got_lower, got_upper = poisson_interval(count)
    assert got_lower == pytest.approx(lower, abs=5e-4, rel=5e-4)
    assert got_upper == pytest.approx(upper, rel=5e-4)


@pytest.mark.parametrize(("count", "lower", "upper"), REFERENCE)
def test_garwood_matches_40_digit_reference(count: float, lower: float, upper: float) -> None:
    got_lower, got_upper = poisson_interval(count)
    # The exact path is good to ~1e-12; the Wilson–Hilferty path (count > LARGE_SHAPE) to 5e-10.
    tolerance = 1e-9 if count > LARGE_SHAPE else 1e-11
    assert got_lower == pytest.approx(lower, rel=tolerance, abs=0.0 if lower else 1e-300)
    assert got_upper == pytest.approx(upper, rel=tolerance)


@given(a=st.integers(min_value=1, max_value=60), x=st.floats(min_value=1e-3, max_value=200.0))
def test_incomplete_gamma_equals_poisson_tail_for_integer_shape(a: int, x: float) -> None:
    """For integer a, Q(a, x) = P(Poisson(x) < a) = Σ_{k<a} e⁻ˣ xᵏ/k! (a closed form)."""
    poisson_cdf = math.fsum(math.exp(k * math.log(x) - x - math.lgamma(k + 1)) for k in range(a))
    p, q = regularized_gamma_pq(float(a), x)
    assert q == pytest.approx(poisson_cdf, rel=1e-11, abs=1e-300)
    assert p + q == pytest.approx(1.0, abs=1e-15)


@given(x=st.floats(min_value=1e-6, max_value=700.0))
def test_shape_one_is_the_exponential_distribution(x: float) -> None:
    p, q = regularized_gamma_pq(1.0, x)
    assert q == pytest.approx(math.exp(-x), rel=1e-12, abs=1e-300)
    assert p == pytest.approx(-math.expm1(-x), rel=1e-12)


@given(
    p=st.floats(min_value=1e-6, max_value=1 - 1e-6),
    a=st.floats(min_value=1e-2, max_value=LARGE_SHAPE),
)
@settings(max_examples=300)
def test_quantile_inverts_the_distribution(p: float, a: float) -> None:
    x = gamma_quantile(p, a)
    if x == 0.0:
        # Only when the quantile is below the smallest double: near 0, P(a, x) ≈ xᵃ/Γ(a+1).
        assert (math.log(p) + math.lgamma(a + 1.0)) / a < math.log(1e-300)
        return
    lower_p, upper_q = regularized_gamma_pq(a, x)
    if p <= 0.5:
        assert lower_p == pytest.approx(p, rel=1e-9)
    else:
        assert upper_q == pytest.approx(1.0 - p, rel=1e-9)


def test_exponential_quantile_closed_form() -> None:
    for p in (1e-9, 0.025, 0.5, 0.975, 0.999999):
        assert gamma_quantile(p, 1.0) == pytest.approx(-math.log1p(-p), rel=1e-12)


def test_large_counts_are_fast_and_normal_like() -> None:
    started = time.perf_counter()
    for count in np.linspace(10_000, 100_000, 50):
        lower, upper = poisson_interval(float(count))
        half = 1.959963984540054 * math.sqrt(count)
        assert lower == pytest.approx(count - half, rel=2e-4)
        assert upper == pytest.approx(count + half, rel=2e-4)
    assert time.perf_counter() - started < 1.0


def test_poisson_interval_rejects_bad_input() -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            poisson_interval(bad)
    with pytest.raises(ValueError):
        poisson_interval(3, confidence=1.0)
    with pytest.raises(ValueError):
        gamma_quantile(0.0, 2.0)


def test_other_confidence_levels_match_chi_square_tables() -> None:
    # 90 %: count 0 → [0, 5.991/2]; 99 %: count 4 → [1.344/2, 25.188/2] (chi-square table).
    assert poisson_interval(0, 0.90)[1] == pytest.approx(2.9957, rel=1e-4)
    lower, upper = poisson_interval(4, 0.99)
    assert lower == pytest.approx(0.6721, rel=1e-3)
    assert upper == pytest.approx(12.594, rel=1e-3)


# ---- compound Poisson ------------------------------------------------------------------------


@given(count=st.integers(min_value=1, max_value=5000), exponent=st.integers(0, 30))
def test_equal_difficulties_give_garwood_scaled(count: int, exponent: int) -> None:
    """The compound interval must reduce to the exact one when every share is alike."""
    d = 2.0**exponent
    lower, upper = compound_poisson_interval(count * d, count * d * d)
    expected_lower, expected_upper = poisson_interval(count)
    assert lower == pytest.approx(expected_lower * d, rel=1e-12)
    assert upper == pytest.approx(expected_upper * d, rel=1e-12)


def test_large_mixed_sum_tends_to_normal_with_compound_variance() -> None:
    rng = np.random.default_rng(5)
    d = 2.0 ** rng.integers(10, 21, size=200_000)
    total, squares = float(d.sum()), float((d * d).sum())
    lower, upper = compound_poisson_interval(total, squares)
    half = 1.959963984540054 * math.sqrt(squares)
    assert lower == pytest.approx(total - half, rel=2e-3)
    assert upper == pytest.approx(total + half, rel=2e-3)


def test_empty_window_upper_bound_uses_the_scale() -> None:
    assert compound_poisson_interval(0.0, 0.0, share_scale=1000.0) == pytest.approx(
        (0.0, 3688.8794541139354)
    )
    assert compound_poisson_interval(0.0, 0.0) == (0.0, math.inf)


def test_compound_interval_covers_on_simulated_vardiff_sums() -> None:
    """Known truth: the expected Σd of a compound Poisson sum with a wide difficulty mix."""
    rng = np.random.default_rng(11)
    levels = 2.0 ** np.arange(10, 21)
    mean_d, mean_d2 = levels.mean(), (levels**2).mean()
    for mean_count in (30.0, 300.0):
        truth = mean_count * mean_d
        hits = 0
        trials = 3000
        counts = rng.poisson(mean_count, size=trials)
        for n in counts:
            d = rng.choice(levels, size=n)
            lower, upper = compound_poisson_interval(
                float(d.sum()), float((d * d).sum()), share_scale=mean_d2 / mean_d
            )
            hits += lower <= truth <= upper
        assert 0.93 <= hits / trials <= 0.97, (mean_count, hits / trials)
