"""Electricity demand of Bitcoin mining (after CCAF's CBECI) and hashprice.

The method bounds the network's power draw by the machines that could be running at a profit:
a machine whose efficiency (J/GH) is below the profitability threshold θ — the energy per unit of
work that the day's mining revenue pays for at a given electricity price — may be hashing. The
least efficient profitable machine gives the upper bound, the most efficient the lower bound, and
their (age-weighted) mean the best guess, each times a data-centre overhead factor (PUE).

Conventions that reproduce CCAF's published daily series (checked against it in the unit tests):
- a day is its 00:00 UTC instant ``t``; a machine counts on day ``t`` when it was released strictly
  before ``t``, is strictly younger than ``5 × 365`` days (CCAF's ``unix_date_of_release +
  157680000``) and its efficiency is strictly below θ;
- θ is the trailing 14-day mean of the daily threshold, outputs the trailing 7-day mean of the
  daily power, both with partial windows at the start of a run of consecutive days; a gap in the
  dates starts a new run (windows and carry-forward never reach across a gap: CCAF's values after
  a gap in our reference file are only reproduced this way);
- on a day with no profitable machine the previous day's power is carried forward.

Method ``1.4.0`` weights the best guess by the machine's age, counted in calendar months from two
months after its release (the deployment lag CCAF assumes): whole years 0–4 weigh 1, 0.8, 0.6, 0.4,
0.2, anything else 0. The weights change only the best guess: the bounds use every eligible
machine, as METHOD.md states (CCAF's own 1.4.0 code also drops weight-0 machines, i.e. those
released less than two months ago, from the bounds). Method ``1.2.0`` takes the plain mean.

This module is pure computation; ``load_*`` functions only read the file they are given.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import pycountry
import yaml

Method = Literal["1.4.0", "1.2.0"]
METHODS: tuple[Method, ...] = ("1.4.0", "1.2.0")

REFERENCE_PRICE_USD_KWH = 0.05
PUE_LOWER = 1.01
PUE_BEST = 1.10
PUE_UPPER = 1.20
TWH_PER_GW_YEAR = 8.766  # 365.25 days × 24 h / 1000
MAX_AGE_S = 5 * 365 * 86400
DEPLOYMENT_LAG_MONTHS = 2
AGE_WEIGHTS = np.array([1.0, 0.8, 0.6, 0.4, 0.2])  # index: whole years since deployment
THRESHOLD_WINDOW_DAYS = 14
OUTPUT_WINDOW_DAYS = 7
SECONDS_PER_DAY = 86400

HARDWARE_COLUMNS = ("model", "released_unix", "efficiency_j_gh", "source")
CCAF_MINERS_COLUMNS = ("Miner_name", "UNIX_date_of_release", "Efficiency_J_Gh", "Qty")
CCAF_MINERS_SOURCE = "CCAF miners.csv"
UNKNOWN_REGION = "ZZ"

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# Hardware table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """One mining machine model as the hardware table lists it."""

    model: str
    released_unix: float
    efficiency_j_gh: float
    source: str


@dataclass(frozen=True, eq=False)
class HardwareTable:
    """Column-wise machine list, so that eligibility is one vectorised comparison per day."""

    models: tuple[str, ...]
    released_unix: FloatArray
    efficiency_j_gh: FloatArray
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.models)
        if n == 0:
            raise ValueError("hardware table is empty")
        released = np.array(self.released_unix, dtype=np.float64)
        efficiency = np.array(self.efficiency_j_gh, dtype=np.float64)
        if released.shape != (n,) or efficiency.shape != (n,) or len(self.sources) != n:
            raise ValueError("hardware table columns differ in length")
        if not np.all(np.isfinite(released)):
            raise ValueError("hardware table has a non-finite release time")
        if not np.all(np.isfinite(efficiency) & (efficiency > 0)):
            raise ValueError("hardware table has a non-positive or non-finite efficiency")
        released.setflags(write=False)
        efficiency.setflags(write=False)
        object.__setattr__(self, "released_unix", released)
        object.__setattr__(self, "efficiency_j_gh", efficiency)

    @classmethod
    def from_machines(cls, machines: Iterable[Machine]) -> HardwareTable:
        rows = list(machines)
        return cls(
            models=tuple(m.model for m in rows),
            released_unix=np.array([m.released_unix for m in rows], dtype=np.float64),
            efficiency_j_gh=np.array([m.efficiency_j_gh for m in rows], dtype=np.float64),
            sources=tuple(m.source for m in rows),
        )

    def __len__(self) -> int:
        return len(self.models)


@dataclass(frozen=True)
class _HardwareFormat:
    """Which header columns hold the model, release instant and efficiency, and where a row's
    source comes from (a column, or one text for the whole file)."""

    name: str
    model: str
    released: str
    efficiency: str
    source_column: str | None
    source_text: str
    header: tuple[str, ...]


HARDWARE_FORMATS = (
    _HardwareFormat(
        "hashatlas hardware.csv", "model", "released_unix", "efficiency_j_gh", "source", "",
        HARDWARE_COLUMNS,
    ),
    # CCAF's list as published in CambridgeAltFin/ccaf_cbeci_api, server_config/miners.csv; its
    # Qty column is not used by the method.
    _HardwareFormat(
        "CCAF miners.csv", "Miner_name", "UNIX_date_of_release", "Efficiency_J_Gh", None,
        CCAF_MINERS_SOURCE, CCAF_MINERS_COLUMNS,
    ),
)


def _hardware_format(header: list[str]) -> _HardwareFormat:
    for candidate in HARDWARE_FORMATS:
        if all(column in header for column in candidate.header):
            return candidate
    expected = " or ".join(f"{','.join(f.header)} ({f.name})" for f in HARDWARE_FORMATS)
    found = ",".join(header) or "(empty)"
    raise ValueError(f"hardware CSV line 1: unknown header {found!r}; expected {expected}")


def parse_hardware_csv(text: str) -> HardwareTable:
    """Parse the project's ``model,released_unix,efficiency_j_gh,source`` table or CCAF's
    ``Miner_name,UNIX_date_of_release,Efficiency_J_Gh,Qty`` list, told apart by the header.

    Errors name the line and the column as the file spells it.
    """
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))
    header = [name.strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = header
    fmt = _hardware_format(header)
    machines: list[Machine] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            raise ValueError(f"hardware CSV line {line}: more fields than the header has columns")
        model = (row[fmt.model] or "").strip()
        if not model:
            raise ValueError(f"hardware CSV line {line}: {fmt.model} is empty")
        released = _parse_finite(row[fmt.released], fmt.released, line)
        efficiency = _parse_finite(row[fmt.efficiency], fmt.efficiency, line)
        if efficiency <= 0:
            raise ValueError(f"hardware CSV line {line}: {fmt.efficiency} must be > 0")
        source = fmt.source_text
        if fmt.source_column is not None:
            source = (row[fmt.source_column] or "").strip()
        machines.append(Machine(model, released, efficiency, source))
    if not machines:
        raise ValueError("hardware CSV has no rows")
    return HardwareTable.from_machines(machines)


def load_hardware(path: str | Path) -> HardwareTable:
    """Read a hardware table (either format); errors carry the path."""
    try:
        return parse_hardware_csv(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _parse_finite(text: str | None, column: str, line: int) -> float:
    if text is None or not text.strip():
        raise ValueError(f"hardware CSV line {line}: {column} is empty")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"hardware CSV line {line}: {column} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"hardware CSV line {line}: {column} is not finite: {text!r}")
    return value


# --------------------------------------------------------------------------------------------
# Threshold and fleet
# --------------------------------------------------------------------------------------------


def profitability_threshold_j_gh(
    revenue_usd_day: npt.ArrayLike,
    hashrate_ths: npt.ArrayLike,
    price_usd_kwh: npt.ArrayLike = REFERENCE_PRICE_USD_KWH,
) -> Any:
    """Energy per unit of work (J/GH) that the revenue pays for at the electricity price.

    θ = (R / (H · 86400)) / (p / 3.6e6) / 1000, which simplifies to R / (24 · H · p).
    Returns a float for scalar inputs, an array otherwise.
    """
    revenue = np.asarray(revenue_usd_day, dtype=np.float64)
    hashrate = np.asarray(hashrate_ths, dtype=np.float64)
    price = np.asarray(price_usd_kwh, dtype=np.float64)
    if np.any(hashrate <= 0) or np.any(price <= 0):
        raise ValueError("hashrate and electricity price must be > 0")
    theta = revenue / (hashrate * SECONDS_PER_DAY) / (price / 3.6e6) / 1000.0
    return float(theta) if theta.ndim == 0 else theta


def _months_since_epoch(unix_s: FloatArray) -> npt.NDArray[np.int64]:
    seconds = np.floor(unix_s).astype(np.int64).astype("datetime64[s]")
    return seconds.astype("datetime64[M]").astype(np.int64)


def _age_weights(at_unix: FloatArray, hardware: HardwareTable) -> FloatArray:
    """CCAF 1.4.0 weights, shape (instants, machines): age in calendar months after deployment."""
    months = _months_since_epoch(at_unix)[:, None] - _months_since_epoch(hardware.released_unix)
    age_months = months - DEPLOYMENT_LAG_MONTHS
    years = np.clip(age_months // 12, 0, len(AGE_WEIGHTS) - 1)
    in_range = (age_months >= 0) & (age_months < 12 * len(AGE_WEIGHTS))
    return np.where(in_range, AGE_WEIGHTS[years], 0.0)


def _fleet_efficiency(
    at_unix: FloatArray, threshold_j_gh: FloatArray, hardware: HardwareTable, method: Method
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Lowest, best-guess and highest efficiency of the eligible fleet at each instant.

    NaN where no machine is eligible. If every eligible machine has weight 0 under 1.4.0 (all of
    them released in the last two months), the best guess falls back to their plain mean.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    released = hardware.released_unix[None, :]
    efficiency = hardware.efficiency_j_gh[None, :]
    t = at_unix[:, None]
    eligible = (released < t) & (t < released + MAX_AGE_S) & (efficiency < threshold_j_gh[:, None])
    count = eligible.sum(axis=1)
    any_eligible = count > 0
    lower = np.where(eligible, efficiency, np.inf).min(axis=1)
    upper = np.where(eligible, efficiency, -np.inf).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        best = np.where(eligible, efficiency, 0.0).sum(axis=1) / count
        if method == "1.4.0":
            weights = np.where(eligible, _age_weights(at_unix, hardware), 0.0)
            total = weights.sum(axis=1)
            weighted = (weights * efficiency).sum(axis=1) / total
            best = np.where(total > 0, weighted, best)
    nan = np.full_like(lower, np.nan)
    return (
        np.where(any_eligible, lower, nan),
        np.where(any_eligible, best, nan),
        np.where(any_eligible, upper, nan),
    )


# --------------------------------------------------------------------------------------------
# Daily CBECI series
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CbeciSeries:
    """Daily CBECI output: smoothed threshold and power band (GW), with annualised TWh."""

    dates: npt.NDArray[np.datetime64]
    threshold_j_gh: FloatArray
    power_gw_lower: FloatArray
    power_gw_best: FloatArray
    power_gw_upper: FloatArray

    @property
    def twh_lower(self) -> FloatArray:
        return self.power_gw_lower * TWH_PER_GW_YEAR

    @property
    def twh_best(self) -> FloatArray:
        return self.power_gw_best * TWH_PER_GW_YEAR

    @property
    def twh_upper(self) -> FloatArray:
        return self.power_gw_upper * TWH_PER_GW_YEAR


def cbeci_daily(
    dates: npt.ArrayLike,
    hashrate_ths: npt.ArrayLike,
    revenue_usd_day: npt.ArrayLike,
    hardware: HardwareTable,
    price_usd_kwh: float = REFERENCE_PRICE_USD_KWH,
    method: Method = "1.4.0",
) -> CbeciSeries:
    """Daily power band from daily network hashrate (TH/s) and miner revenue (USD/day).

    ``dates`` are ``datetime64`` values or integer days since 1970-01-01, strictly increasing;
    a gap between consecutive dates starts a new run (see the module docstring).
    """
    days = _as_unix_days(dates)
    hashrate = np.asarray(hashrate_ths, dtype=np.float64)
    revenue = np.asarray(revenue_usd_day, dtype=np.float64)
    if hashrate.shape != days.shape or revenue.shape != days.shape:
        raise ValueError("dates, hashrate_ths and revenue_usd_day must have the same length")
    if not (np.all(np.isfinite(hashrate)) and np.all(hashrate > 0)):
        raise ValueError("hashrate_ths must be finite and > 0")
    if not (np.all(np.isfinite(revenue)) and np.all(revenue >= 0)):
        raise ValueError("revenue_usd_day must be finite and >= 0")
    if not (math.isfinite(price_usd_kwh) and price_usd_kwh > 0):
        raise ValueError("price_usd_kwh must be finite and > 0")

    run_start = _run_starts(days)
    daily_threshold = np.asarray(profitability_threshold_j_gh(revenue, hashrate, price_usd_kwh))
    threshold = _trailing_mean(daily_threshold, THRESHOLD_WINDOW_DAYS, run_start)
    at_unix = days.astype(np.float64) * SECONDS_PER_DAY
    e_lower, e_best, e_upper = _fleet_efficiency(at_unix, threshold, hardware, method)

    def daily_power_gw(efficiency: FloatArray, pue: float) -> FloatArray:
        raw = efficiency * hashrate / 1e6 * pue
        return _trailing_mean(_carry_forward(raw, run_start), OUTPUT_WINDOW_DAYS, run_start)

    return CbeciSeries(
        dates=days.astype("datetime64[D]"),
        threshold_j_gh=threshold,
        power_gw_lower=daily_power_gw(e_lower, PUE_LOWER),
        power_gw_best=daily_power_gw(e_best, PUE_BEST),
        power_gw_upper=daily_power_gw(e_upper, PUE_UPPER),
    )


def _as_unix_days(dates: npt.ArrayLike) -> npt.NDArray[np.int64]:
    values = np.asarray(dates)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("dates must be a non-empty one-dimensional sequence")
    if values.dtype.kind == "M":
        days = values.astype("datetime64[D]").astype(np.int64)
    elif values.dtype.kind in "iu":
        days = values.astype(np.int64)
    else:
        raise ValueError("dates must be datetime64 values or integer days since 1970-01-01")
    if np.any(np.diff(days) <= 0):
        raise ValueError("dates must be strictly increasing")
    return days


def _run_starts(days: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Index of the first element of each element's run of consecutive days."""
    index = np.arange(days.size)
    starts = np.where(np.concatenate(([True], np.diff(days) != 1)), index, 0)
    return np.maximum.accumulate(starts)


def _trailing_mean(values: FloatArray, window: int, run_start: npt.NDArray[np.int64]) -> FloatArray:
    """Mean of the finite values among the last ``window`` ones of the same run (NaN if none).

    Built from explicit windows rather than a running sum, which would lose precision when the
    series spans orders of magnitude (early-years thresholds are 10⁵ times today's).
    """
    n = values.size
    padded = np.concatenate((np.full(window - 1, np.nan), values))
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    source_index = np.arange(n)[:, None] - (window - 1) + np.arange(window)[None, :]
    usable = (source_index >= run_start[:, None]) & np.isfinite(windows)
    count = usable.sum(axis=1)
    total = np.where(usable, windows, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _carry_forward(values: FloatArray, run_start: npt.NDArray[np.int64]) -> FloatArray:
    """Replace NaN by the last finite value of the same run (NaN stays if there is none)."""
    index = np.arange(values.size)
    last_finite = np.maximum.accumulate(np.where(np.isfinite(values), index, -1))
    usable = last_finite >= run_start
    return np.where(usable, values[np.maximum(last_finite, 0)], np.nan)


# --------------------------------------------------------------------------------------------
# Live power bands
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerBand:
    """Power draw in W: lower bound, best guess, upper bound."""

    lower_w: float
    best_w: float
    upper_w: float


def annualized_twh(power_w: float) -> float:
    """TWh per year drawn by a constant power (W), with CCAF's 365.25-day year."""
    return power_w / 1e9 * TWH_PER_GW_YEAR


def power_band_w(
    hashrate_hs: float,
    threshold_j_gh: float,
    hardware: HardwareTable,
    at_unix: float,
    method: Method = "1.4.0",
) -> PowerBand:
    """Power band at one instant, for a hashrate (H/s) and an already smoothed threshold.

    A live estimate has no previous day to carry forward, so when no machine is profitable the
    band falls back to the most efficient machine released before ``at_unix`` (whatever its age):
    whoever is still hashing can at best be using that. Raises ValueError if the table lists no
    machine released before ``at_unix``.
    """
    if not (math.isfinite(hashrate_hs) and hashrate_hs >= 0):
        raise ValueError("hashrate_hs must be finite and >= 0")
    if not (math.isfinite(threshold_j_gh) and threshold_j_gh >= 0):
        raise ValueError("threshold_j_gh must be finite and >= 0")
    if not math.isfinite(at_unix):
        raise ValueError("at_unix must be finite")
    lower, best, upper = (
        float(e[0])
        for e in _fleet_efficiency(
            np.array([at_unix]), np.array([threshold_j_gh]), hardware, method
        )
    )
    if math.isnan(lower):
        released = hardware.released_unix < at_unix
        if not np.any(released):
            raise ValueError(f"no machine in the hardware table was released before {at_unix}")
        lower = best = upper = float(hardware.efficiency_j_gh[released].min())
    gigahashes = hashrate_hs / 1e9
    return PowerBand(
        lower_w=lower * gigahashes * PUE_LOWER,
        best_w=best * gigahashes * PUE_BEST,
        upper_w=upper * gigahashes * PUE_UPPER,
    )


def region_price(region: str, prices: Mapping[str, float], default_price: float) -> float:
    """A region's electricity price: its own, else its country's (``US-TX`` → ``US``), else the
    default."""
    if region in prices:
        return prices[region]
    country = region.split("-", 1)[0]
    return prices.get(country, default_price)


def regional_power_bands(
    region_hashrate_hs: Mapping[str, float],
    base_threshold_j_gh: float,
    *,
    hardware: HardwareTable,
    at_unix: float,
    prices: Mapping[str, float] | None = None,
    default_price: float = REFERENCE_PRICE_USD_KWH,
    method: Method = "1.4.0",
) -> dict[str, PowerBand]:
    """Power band per region, each with its own electricity price and so its own fleet.

    ``base_threshold_j_gh`` is θ at the reference price 0.05 USD/kWh; a region paying p_r sees
    θ_r = θ · 0.05 / p_r, so cheap power keeps older, less efficient machines profitable.
    """
    price_table = dict(prices or {})
    bad = [r for r, p in price_table.items() if not (math.isfinite(p) and p > 0)]
    if bad or not (math.isfinite(default_price) and default_price > 0):
        raise ValueError(f"electricity prices must be finite and > 0 (bad: {bad or 'default'})")
    bands: dict[str, PowerBand] = {}
    for region, hashrate in region_hashrate_hs.items():
        price = region_price(region, price_table, default_price)
        threshold = base_threshold_j_gh * REFERENCE_PRICE_USD_KWH / price
        bands[region] = power_band_w(hashrate, threshold, hardware, at_unix, method)
    return bands


# --------------------------------------------------------------------------------------------
# Hashprice
# --------------------------------------------------------------------------------------------


def hashprice_usd_ph_day(
    subsidy_sat_per_block: float,
    mean_fees_sat_per_block: float,
    blocks_per_day: float,
    btc_usd: float,
    network_hashrate_hs: float,
) -> float:
    """Expected miner revenue per PH/s per day (Luxor's hashprice), in USD.

    Fees are the mean over the last 144 blocks, so one fee-heavy block does not make it jump.
    """
    inputs = {
        "subsidy_sat_per_block": subsidy_sat_per_block,
        "mean_fees_sat_per_block": mean_fees_sat_per_block,
        "blocks_per_day": blocks_per_day,
        "btc_usd": btc_usd,
    }
    for name, value in inputs.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0")
    if not (math.isfinite(network_hashrate_hs) and network_hashrate_hs > 0):
        raise ValueError("network_hashrate_hs must be finite and > 0")
    btc_per_day = (subsidy_sat_per_block + mean_fees_sat_per_block) / 1e8 * blocks_per_day
    return btc_per_day * btc_usd / (network_hashrate_hs / 1e15)


# --------------------------------------------------------------------------------------------
# Electricity price configuration
# --------------------------------------------------------------------------------------------


class _NoBoolLoader(yaml.SafeLoader):
    """Safe YAML without YAML 1.1 booleans, so that Norway's ``NO`` stays a region code."""


_NoBoolLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def is_region_code(code: str) -> bool:
    """ISO 3166-1 alpha-2 country, ISO 3166-2 subdivision, or ``ZZ`` (unknown); upper case."""
    if code == UNKNOWN_REGION:
        return True
    if code != code.upper():
        return False
    if "-" in code:
        return pycountry.subdivisions.get(code=code) is not None
    return len(code) == 2 and pycountry.countries.get(alpha_2=code) is not None


@dataclass(frozen=True)
class RegionPrice:
    """One region's electricity price with where it comes from (empty for the plain-number form)."""

    usd_kwh: float
    source: str = ""
    date: str = ""
    note: str = ""


PRICE_ENTRY_KEYS = ("usd_kwh", "source", "date")
PRICE_ENTRY_OPTIONAL_KEYS = ("note",)
_PRICE_DATE = re.compile(r"^\d{4}(?:-(?:0[1-9]|1[0-2])(?:-(?:0[1-9]|[12]\d|3[01]))?)?$")


def parse_electricity_price_table(text: str) -> tuple[float, dict[str, RegionPrice]]:
    """Parse ``default_usd_kwh`` and ``regions``; every bad entry is named.

    A region holds either a mapping ``{usd_kwh: 0.08, source: "...", date: "2025-09"}`` (``note``
    optional) or, as older files do, a plain number of USD/kWh. ``date`` is the period the price
    describes: ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``.
    """
    try:
        document = yaml.load(text, Loader=_NoBoolLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"electricity prices: not valid YAML: {exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ValueError("electricity prices: expected a mapping at the top level")
    errors: list[str] = []
    unknown = sorted(str(k) for k in document if k not in ("default_usd_kwh", "regions"))
    if unknown:
        errors.append(f"unknown key(s) {', '.join(unknown)} (expected default_usd_kwh, regions)")
    default = _price_or_error(
        document.get("default_usd_kwh", REFERENCE_PRICE_USD_KWH), "default_usd_kwh", errors
    )
    regions_raw = document.get("regions") or {}
    regions: dict[str, RegionPrice] = {}
    if not isinstance(regions_raw, dict):
        errors.append("regions must be a mapping of region code to a price entry")
        regions_raw = {}
    for key, value in cast(dict[Any, Any], regions_raw).items():
        if not isinstance(key, str) or not is_region_code(key):
            errors.append(
                f"regions.{key}: not a region code (ISO 3166-1 alpha-2 such as US, ISO 3166-2 "
                "such as US-TX, or ZZ; upper case)"
            )
            continue
        entry = _region_price_or_error(value, f"regions.{key}", errors)
        if entry is not None:
            regions[key] = entry
    if errors or default is None:
        raise ValueError("electricity prices: " + "; ".join(errors))
    return default, regions


def parse_electricity_prices(text: str) -> tuple[float, dict[str, float]]:
    """The default price and each region's USD/kWh (sources dropped), as the pipeline uses them."""
    default, regions = parse_electricity_price_table(text)
    return default, {code: entry.usd_kwh for code, entry in regions.items()}


def load_electricity_price_table(path: str | Path) -> tuple[float, dict[str, RegionPrice]]:
    """Read a prices file with its sources; errors carry the path."""
    try:
        return parse_electricity_price_table(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_electricity_prices(path: str | Path) -> tuple[float, dict[str, float]]:
    """Read a prices file; errors carry the path so an operator knows which file to fix."""
    try:
        return parse_electricity_prices(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _region_price_or_error(value: object, name: str, errors: list[str]) -> RegionPrice | None:
    if not isinstance(value, dict):
        price = _price_or_error(value, name, errors)
        return None if price is None else RegionPrice(price)
    entry = cast(dict[Any, Any], value)
    problems: list[str] = []
    allowed = PRICE_ENTRY_KEYS + PRICE_ENTRY_OPTIONAL_KEYS
    extra = sorted(str(k) for k in entry if k not in allowed)
    if extra:
        problems.append(
            f"{name}: unknown key(s) {', '.join(extra)} (expected {', '.join(PRICE_ENTRY_KEYS)}, "
            f"optional {', '.join(PRICE_ENTRY_OPTIONAL_KEYS)})"
        )
    missing = [k for k in PRICE_ENTRY_KEYS if k not in entry]
    if missing:
        problems.append(f"{name}: missing {', '.join(missing)}")
    price = None
    if "usd_kwh" in entry:
        price = _price_or_error(entry["usd_kwh"], f"{name}.usd_kwh", problems)
    texts: dict[str, str] = {}
    for key in ("source", "note"):
        text = entry.get(key, "")
        if not isinstance(text, str) or (key == "source" and key in entry and not text.strip()):
            problems.append(f"{name}.{key}: must be a non-empty text")
        else:
            texts[key] = text.strip()
    date_text = ""
    if "date" in entry:
        raw = entry["date"]
        # YAML reads 2025-09-30 as a date and 2025 as a number.
        date_text = raw.isoformat() if isinstance(raw, datetime.date) else str(raw).strip()
        if isinstance(raw, bool | float) or not _PRICE_DATE.match(date_text):
            problems.append(f"{name}.date: {raw!r} is not YYYY, YYYY-MM or YYYY-MM-DD")
    errors.extend(problems)
    if problems or price is None:
        return None
    return RegionPrice(price, texts["source"], date_text, texts.get("note", ""))


def _price_or_error(value: object, name: str, errors: list[str]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(f"{name}: {value!r} is not a number")
        return None
    price = float(value)
    if not (math.isfinite(price) and price > 0):
        errors.append(f"{name}: {value!r} must be a positive number of USD/kWh")
        return None
    return price
