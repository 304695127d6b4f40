"""Regions: ISO codes, each region's share of the sampled hashrate, and its network hashrate.

After the CCAF Bitcoin Mining Map (METHOD.md §4): pools geolocate their hashers, the share sample
gives hashrate per (pool, region), a region's share of the sample times the network hashrate is
the region's hashrate. Beyond CCAF, every share carries a 95% interval (CCAF published none), the
sample can be weighted by each pool's share of network blocks (a plain pooled sample mirrors the
geography of whichever pools happen to be sampled), and CCAF's VPN rule (Zhejiang's inflated share
spread over the other Chinese provinces) is generalised to any configured "suspect" region.

Region codes are ISO 3166-1 alpha-2 (`US`) or ISO 3166-2 (`US-TX`); `ZZ` means unknown location.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import pycountry

UNKNOWN_REGION = "ZZ"
Z95 = 1.959963984540054

Weighting = Literal["pooled", "pool_weighted"]
Level = Literal["country", "subdivision"]
FloatArray = npt.NDArray[np.float64]


# ---- region codes ----------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _lookup(code: str) -> tuple[str, str, str]:
    """(normalised code, country code, display name); pycountry's lookups are too slow per share."""
    if code == UNKNOWN_REGION:
        return UNKNOWN_REGION, UNKNOWN_REGION, "Unknown"
    if "-" in code:
        subdivision = pycountry.subdivisions.get(code=code)
        if subdivision is None:
            raise ValueError(f"region {code!r} is not an ISO 3166-2 subdivision code")
        return code, str(subdivision.country_code), str(subdivision.name)
    if len(code) != 2 or not code.isalpha():
        raise ValueError(
            f"region {code!r} is neither ISO 3166-1 alpha-2 (e.g. 'US') nor ISO 3166-2 "
            "(e.g. 'US-TX') nor 'ZZ' (unknown)"
        )
    country = pycountry.countries.get(alpha_2=code)
    if country is None:
        raise ValueError(f"region {code!r} is not an assigned ISO 3166-1 alpha-2 country code")
    # common_name where ISO's formal name is awkward ("Iran, Islamic Republic of" → "Iran").
    return code, code, str(getattr(country, "common_name", None) or country.name)


def normalise_region(code: str) -> str:
    """Canonical (upper-case, validated) form of a region code; ValueError says what is wrong."""
    if not isinstance(code, str):
        raise ValueError(f"region must be a string, got {type(code).__name__}")
    cleaned = code.strip().upper()
    if not cleaned:
        raise ValueError("region is empty")
    return _lookup(cleaned)[0]


def country_of(code: str) -> str:
    """The country a region belongs to: a subdivision rolls up ('US-TX' → 'US'); 'ZZ' stays."""
    return _lookup(normalise_region(code))[1]


def region_name(code: str) -> str:
    """Human-readable name: 'US' → 'United States', 'US-TX' → 'Texas', 'ZZ' → 'Unknown'."""
    return _lookup(normalise_region(code))[2]


def is_subdivision(code: str) -> bool:
    """True for an ISO 3166-2 subdivision code, False for a country or 'ZZ'."""
    return "-" in normalise_region(code)


def subdivisions_of(country: str, entries: Iterable[str]) -> list[str]:
    """The subdivisions of `country` among `entries` (region codes), sorted.

    Lets a country's API entry list the subdivisions the estimates hold for it.
    """
    country_code = normalise_region(country)
    if is_subdivision(country_code):
        raise ValueError(f"{country_code!r} is a subdivision, not a country")
    found = {
        code
        for code in (normalise_region(entry) for entry in entries)
        if is_subdivision(code) and country_of(code) == country_code
    }
    return sorted(found)


# ---- shares ----------------------------------------------------------------------------------


class SampleLike(Protocol):
    """What the share sample gives per (pool, region): hashrate and its standard error, H/s."""

    @property
    def hashrate_hs(self) -> float: ...

    @property
    def se_hs(self) -> float: ...


@dataclass(frozen=True)
class RegionShare:
    """A region's share of the (weighted) sample, with a 95% interval and standard error.

    `sample_hashrate_hs` and `sample_se_hs` are what the sample itself shows in the region
    (summed over pools, before weighting and suspect redistribution); `share_se` is the
    delta-method standard error behind `share_ci95`.
    """

    region: str
    share: float
    share_ci95: tuple[float, float]
    sample_hashrate_hs: float
    sample_se_hs: float
    share_se: float
    #: The sampling-only interval and SE (what `region_shares` puts in `share_ci95`); after
    #: `network_share_intervals`, `share_ci95`/`share_se` cover the network's share instead.
    sampling_ci95: tuple[float, float] | None = None
    sampling_se: float | None = None
    #: False for a region of the reference list that no sampled share came from (share 0).
    observed: bool = True
    #: "delta": `share_ci95` is ±1.96 `share_se`; "unobserved_bound": its upper end is the
    #: bound of a region the sample does not see (`streams.core.unobserved_regions`).
    interval_basis: Literal["delta", "unobserved_bound"] = "delta"


def _checked(key: tuple[str, str], sample: SampleLike) -> tuple[float, float]:
    hashrate = float(sample.hashrate_hs)
    se = float(sample.se_hs)
    if not (math.isfinite(hashrate) and hashrate >= 0.0):
        raise ValueError(f"sample {key}: hashrate_hs must be finite and >= 0, got {hashrate}")
    if not (math.isfinite(se) and se >= 0.0):
        raise ValueError(f"sample {key}: se_hs must be finite and >= 0, got {se}")
    return hashrate, se


def _suspect_areas(suspect_regions: Mapping[str, str | None]) -> dict[str, str | None]:
    areas: dict[str, str | None] = {}
    for region, area in suspect_regions.items():
        code = normalise_region(region)
        if area is None:
            areas[code] = None
            continue
        area_code = normalise_region(area)
        if is_subdivision(area_code) or area_code == UNKNOWN_REGION:
            raise ValueError(f"suspect region {code}: area must be a country code, got {area!r}")
        if country_of(code) != area_code or code == area_code:
            raise ValueError(
                f"suspect region {code} must be a subdivision of its area {area_code}, "
                "or use area None to spread it globally"
            )
        areas[code] = area_code
    return areas


def _first_stage(
    pair_pools: list[str],
    indicator: FloatArray,
    hashrates: FloatArray,
    weighting: Weighting,
    pool_weights: Mapping[str, float] | None,
) -> tuple[FloatArray, FloatArray]:
    """Per fine region: the quantity to share out (u) and its Jacobian du/dX over the pairs.

    `indicator[f, j]` is 1 when pair j lies in fine region f.
    """
    n_fine, n_pairs = indicator.shape
    if weighting == "pooled":
        return indicator @ hashrates, indicator
    if weighting != "pool_weighted":
        raise ValueError(f"weighting must be 'pooled' or 'pool_weighted', got {weighting!r}")
    if pool_weights is None:
        raise ValueError("weighting='pool_weighted' needs pool_weights (pool → share of blocks)")
    pools = sorted(set(pair_pools))
    totals = {p: 0.0 for p in pools}
    for pool, hashrate in zip(pair_pools, hashrates, strict=True):
        totals[pool] += float(hashrate)
    raw_weights: dict[str, float] = {}
    for pool in pools:
        weight = float(pool_weights.get(pool, 0.0))
        if not (math.isfinite(weight) and weight >= 0.0):
            raise ValueError(f"pool weight of {pool!r} must be finite and >= 0, got {weight}")
        if weight > 0.0 and totals[pool] > 0.0:
            raw_weights[pool] = weight
    weight_sum = sum(raw_weights.values())
    u = np.zeros(n_fine)
    jacobian = np.zeros((n_fine, n_pairs))
    for pool, weight in raw_weights.items():
        in_pool = np.fromiter((p == pool for p in pair_pools), dtype=bool, count=n_pairs)
        total = totals[pool]
        scale = weight / weight_sum
        mix = indicator[:, in_pool] @ hashrates[in_pool] / total
        u += scale * mix
        # d(w·X_pf/T_p)/dX_pr = w·(1[r = f] − m_pf)/T_p for pairs of pool p, 0 elsewhere.
        jacobian[:, in_pool] += scale * (indicator[:, in_pool] - mix[:, None]) / total
    return u, jacobian


def _spread_pass(
    u: FloatArray,
    fine: list[str],
    suspect_of: list[str | None],
    areas: Mapping[str, str | None],
) -> tuple[FloatArray, FloatArray]:
    """Spread each suspect in `areas` over the non-suspect regions of its area, in proportion.

    Returns u' and du'/du. A suspect whose area holds no other mass keeps it.
    """
    result = u.copy()
    jacobian = np.eye(u.size)
    is_suspect = np.array([s is not None for s in suspect_of], dtype=bool)
    for suspect, area in areas.items():
        members = np.array([s == suspect for s in suspect_of], dtype=bool)
        receivers = ~is_suspect
        if area is not None:
            receivers &= np.array([country_of(code) == area for code in fine], dtype=bool)
        mass = float(u[members].sum())
        others = float(u[receivers].sum())
        if not members.any() or others <= 0.0:
            continue
        result[members] = 0.0
        jacobian[members, :] = 0.0
        result[receivers] += mass * u[receivers] / others
        # u'_r gains M·u_r/O: ∂/∂u_r (own) M/O, ∂/∂u_s (suspect) u_r/O, ∂/∂u_q (receiver) −M·u_r/O².
        rows = np.flatnonzero(receivers)
        fractions = u[rows] / others
        jacobian[rows, rows] += mass / others
        jacobian[np.ix_(rows, np.flatnonzero(members))] += fractions[:, None]
        jacobian[np.ix_(rows, rows)] -= (fractions * (mass / others))[:, None]
    return result, jacobian


def _redistribute(
    u: FloatArray, fine: list[str], areas: Mapping[str, str | None]
) -> tuple[FloatArray, FloatArray]:
    """Suspects within a country first, then global ones in proportion to the corrected map.

    Returns u' and du'/du. Suspects of one pass never receive mass, so within a pass the order of
    suspects does not matter; the global pass sees the map after the in-country corrections.
    """
    suspect_of: list[str | None] = []
    for code in fine:
        if code in areas:
            suspect_of.append(code)
        elif country_of(code) in areas:
            suspect_of.append(country_of(code))
        else:
            suspect_of.append(None)
    local = {s: a for s, a in areas.items() if a is not None}
    spread_local, jac_local = _spread_pass(u, fine, suspect_of, local)
    global_ = {s: a for s, a in areas.items() if a is None}
    spread, jac_global = _spread_pass(spread_local, fine, suspect_of, global_)
    return spread, jac_global @ jac_local


def _merged_pairs(samples: Mapping[tuple[str, str], SampleLike]
                  ) -> dict[tuple[str, str], tuple[float, float]]:
    """(pool, normalised region) → (hashrate, variance), summing keys that normalise alike."""
    merged: dict[tuple[str, str], tuple[float, float]] = {}
    for key, sample in samples.items():
        pool, region = key
        hashrate, se = _checked(key, sample)
        pair = (pool, normalise_region(region))
        old_hashrate, old_var = merged.get(pair, (0.0, 0.0))
        merged[pair] = (old_hashrate + hashrate, old_var + se * se)
    return merged


def region_shares(
    samples: Mapping[tuple[str, str], SampleLike],
    *,
    weighting: Weighting = "pooled",
    pool_weights: Mapping[str, float] | None = None,
    suspect_regions: Mapping[str, str | None] | None = None,
    level: Level = "country",
) -> dict[str, RegionShare]:
    """Each region's share of the sample, keyed by region code, with delta-method 95% intervals.

    `samples` maps (pool, region) to that pair's sample hashrate and SE. `level="country"` rolls
    subdivisions into their country; `"subdivision"` keeps them, and country-level data stays as
    the country. `weighting="pooled"`: region hashrate / total. `"pool_weighted"`: each pool's
    regional mix weighted by its share of network blocks (`pool_weights`, renormalised over the
    sampled pools that have hashrate; a sampled pool without a weight counts 0).

    `suspect_regions` maps a suspect region (VPN or hosting exit) to its parent country, over
    whose other regions its mass is spread in proportion (CCAF's Zhejiang rule: {'CN-ZJ': 'CN'}),
    or to None to spread it over all other regions; a suspect country includes its subdivisions.
    Suspects are applied at the finest level before rolling up, in-country ones first, then
    global ones in proportion to the corrected map; they stay listed with share 0 (or keep their
    mass when their area holds nothing else to give it to).

    Intervals: the per-(pool, region) estimates are independent compound-Poisson sums, so the
    variance of each share is Σ (∂share/∂X)² SE² over the pairs, with the gradient taken through
    weighting, redistribution and normalisation; ±1.96 SE, clipped to [0, 1]. Pool weights are
    taken as exact. Shares sum to 1; the result is empty when there is nothing to share out.
    """
    if level not in ("country", "subdivision"):
        raise ValueError(f"level must be 'country' or 'subdivision', got {level!r}")
    merged = _merged_pairs(samples)
    if not merged:
        return {}
    pairs = list(merged)
    fine = sorted({region for _, region in pairs})
    fine_index = {code: i for i, code in enumerate(fine)}
    indicator = np.zeros((len(fine), len(pairs)))
    indicator[[fine_index[region] for _, region in pairs], np.arange(len(pairs))] = 1.0
    hashrates = np.array([merged[p][0] for p in pairs])
    variances = np.array([merged[p][1] for p in pairs])

    u, jac_first = _first_stage(
        [pool for pool, _ in pairs], indicator, hashrates, weighting, pool_weights
    )
    areas = _suspect_areas(suspect_regions or {})
    u_spread, jac_spread = _redistribute(u, fine, areas) if areas else (u, np.eye(len(fine)))

    out_codes = [country_of(c) if level == "country" else c for c in fine]
    regions = sorted(set(out_codes))
    out_index = {code: i for i, code in enumerate(regions)}
    rollup = np.zeros((len(regions), len(fine)))
    rollup[[out_index[c] for c in out_codes], np.arange(len(fine))] = 1.0
    values = rollup @ u_spread
    total = float(values.sum())
    if not total > 0.0:
        return {}
    shares = values / total
    jac_share = (rollup - shares[:, None]) / total
    gradient = jac_share @ jac_spread @ jac_first
    share_se = np.sqrt(np.square(gradient) @ variances)

    sample_hashrate = rollup @ indicator @ hashrates
    sample_var = rollup @ indicator @ variances
    result: dict[str, RegionShare] = {}
    for i, code in enumerate(regions):
        share = float(shares[i])
        se = float(share_se[i])
        result[code] = RegionShare(
            region=code,
            share=share,
            share_ci95=(max(0.0, share - Z95 * se), min(1.0, share + Z95 * se)),
            sample_hashrate_hs=float(sample_hashrate[i]),
            sample_se_hs=math.sqrt(float(sample_var[i])),
            share_se=se,
            sampling_ci95=(max(0.0, share - Z95 * se), min(1.0, share + Z95 * se)),
            sampling_se=se,
        )
    return result


# ---- regional hashrate -----------------------------------------------------------------------


@dataclass(frozen=True)
class RegionalHashrate:
    """A region's estimated network hashrate (share × network) with its 95% interval, H/s."""

    region: str
    share: float
    share_ci95: tuple[float, float]
    hashrate_hs: float
    hashrate_ci95_hs: tuple[float, float]
    sample_hashrate_hs: float


def regional_hashrates(
    shares: Mapping[str, RegionShare],
    network_hashrate_hs: float,
    network_ci95_hs: tuple[float, float],
) -> dict[str, RegionalHashrate]:
    """Region hashrate = share × network hashrate, interval by the product's delta method.

    Share and network estimate are independent (the share is a ratio within the sample, the
    network level comes from blocks and coverage), so Var(s·N) = N²·Var(s) + s²·Var(N) +
    Var(s)·Var(N) exactly; SE(N) is the network interval's width / (2·1.96). The interval is
    ±1.96 SE around s·N, clipped at 0. Chosen over combining on log scale because shares of 0, or
    small shares with wide intervals, have no usable log-scale error.
    """
    network = float(network_hashrate_hs)
    lower, upper = (float(network_ci95_hs[0]), float(network_ci95_hs[1]))
    if not (math.isfinite(network) and network >= 0.0):
        raise ValueError(f"network hashrate must be finite and >= 0, got {network}")
    if not (math.isfinite(lower) and math.isfinite(upper) and 0.0 <= lower <= upper):
        raise ValueError(f"network interval needs 0 <= lower <= upper, got {network_ci95_hs}")
    network_var = ((upper - lower) / (2.0 * Z95)) ** 2
    result: dict[str, RegionalHashrate] = {}
    for code, entry in shares.items():
        share_var = entry.share_se**2
        hashrate = entry.share * network
        se = math.sqrt(
            network**2 * share_var + entry.share**2 * network_var + share_var * network_var
        )
        result[code] = RegionalHashrate(
            region=entry.region,
            share=entry.share,
            share_ci95=entry.share_ci95,
            hashrate_hs=hashrate,
            hashrate_ci95_hs=(max(0.0, hashrate - Z95 * se), hashrate + Z95 * se),
            sample_hashrate_hs=entry.sample_hashrate_hs,
        )
    return result
