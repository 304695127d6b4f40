"""Mining sites and their power capacity: one registry contract, its checks and its summaries.

Where hashatlas's estimates say where hashrate *is* (CCAF's Mining Map), the site registry says
where public mining companies have *built power* (TheMinerMag's North American Bitcoin Mining
Map): one row per site and date, with energised and planned megawatts kept apart and a status
(`mining`, `hpc`, `mixed`, `curtailed`, `planned`, `closed`). Several rows of one site with
different ``as_of`` dates are its status history, so capacity reallocated from bitcoin mining to
AI/HPC hosting shows over time.

Pure: parses text given to it (CSV or GeoJSON), never opens files. Every bad row is reported
with its row number and field; the good rows are kept.

Conventions:

- A site is ``(operator, site)``. Its state at a date is its row with the latest ``as_of`` on or
  before that date.
- ``energised_mw`` empty means the source did not state it; summaries count it as 0 and say how
  many rows had none. ``planned_mw`` is capacity announced but not energised.
- Mining capacity (the denominator of utilisation) is the energised MW of sites whose state is
  ``mining``, ``mixed`` or ``curtailed``.
- MW moved to HPC: when a site's state changes from ``mining`` to ``hpc``, the energised MW of its
  last ``mining`` row count as moved, at the ``as_of`` of the first ``hpc`` row.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import pycountry

STATUSES = ("mining", "hpc", "mixed", "curtailed", "planned", "closed")
MINING_STATUSES = frozenset({"mining", "mixed", "curtailed"})
COLUMNS = ("operator", "site", "country", "subdivision", "latitude", "longitude",
           "energised_mw", "planned_mw", "status", "as_of", "source", "notes")
REQUIRED_COLUMNS = ("operator", "site", "country", "status", "as_of", "source")
W_PER_MW = 1e6

GroupBy = Literal["region", "country", "subdivision", "status", "operator"]
GROUPINGS: tuple[GroupBy, ...] = ("region", "country", "subdivision", "status", "operator")
Mode = Literal["replace", "extend"]


class RegistryError(ValueError):
    """A registry that cannot be read at all (not CSV/GeoJSON, no header, wrong columns)."""


@dataclass(frozen=True)
class RowError:
    """One bad value: the row (CSV line number, or GeoJSON feature number from 1) and field."""

    row: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Site:
    """One row of the registry: a site's state at ``as_of``."""

    operator: str
    site: str
    country: str
    subdivision: str | None
    latitude: float | None
    longitude: float | None
    energised_mw: float | None
    planned_mw: float | None
    status: str
    as_of: datetime.date
    source: str
    notes: str = ""
    row: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.operator, self.site)

    @property
    def region(self) -> str:
        """The finest region the row names: its subdivision, else its country."""
        return self.subdivision or self.country

    @property
    def energised(self) -> float:
        return self.energised_mw or 0.0

    @property
    def planned(self) -> float:
        return self.planned_mw or 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "operator": self.operator, "site": self.site, "country": self.country,
            "subdivision": self.subdivision, "region": self.region,
            "latitude": self.latitude, "longitude": self.longitude,
            "energised_mw": self.energised_mw, "planned_mw": self.planned_mw,
            "status": self.status, "as_of": self.as_of.isoformat(), "source": self.source,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Registry:
    """The rows that passed every check, and one error per bad value of the others."""

    sites: tuple[Site, ...]
    errors: tuple[RowError, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


# ---- parsing -----------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _country_ok(code: str) -> bool:
    return len(code) == 2 and pycountry.countries.get(alpha_2=code) is not None


@lru_cache(maxsize=4096)
def _subdivision_country(code: str) -> str | None:
    lookup: Any = getattr(pycountry.subdivisions, "get")  # noqa: B009 (pycountry is untyped)
    subdivision = lookup(code=code)
    return None if subdivision is None else str(subdivision.country_code)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def _number(value: object, field: str, row: int, errors: list[RowError]) -> float | None:
    text = _text(value)
    if not text:
        return None
    if isinstance(value, bool):
        errors.append(RowError(row, field, f"not a number: {value!r}"))
        return None
    try:
        number = float(text)
    except ValueError:
        errors.append(RowError(row, field, f"not a number: {text!r}"))
        return None
    if not math.isfinite(number):
        errors.append(RowError(row, field, f"not finite: {text!r}"))
        return None
    return number


def parse_row(values: Mapping[str, object], row: int) -> tuple[Site | None, list[RowError]]:
    """One row checked against the contract: the site, or None and every error found."""
    errors: list[RowError] = []
    for field in REQUIRED_COLUMNS:
        if not _text(values.get(field)):
            errors.append(RowError(row, field, "required"))
    operator, site = _text(values.get("operator")), _text(values.get("site"))
    country = _text(values.get("country")).upper()
    if country and not _country_ok(country):
        errors.append(RowError(row, "country",
                               f"{country!r} is not an ISO 3166-1 alpha-2 country code"))
    subdivision = _text(values.get("subdivision")).upper() or None
    if subdivision is not None:
        owner = _subdivision_country(subdivision)
        if owner is None:
            errors.append(RowError(row, "subdivision",
                                   f"{subdivision!r} is not an ISO 3166-2 subdivision code"))
        elif country and owner != country:
            errors.append(RowError(row, "subdivision",
                                   f"{subdivision!r} is not in country {country!r}"))
    latitude = _number(values.get("latitude"), "latitude", row, errors)
    longitude = _number(values.get("longitude"), "longitude", row, errors)
    if latitude is not None and not -90.0 <= latitude <= 90.0:
        errors.append(RowError(row, "latitude", f"{latitude} is outside -90..90"))
    if longitude is not None and not -180.0 <= longitude <= 180.0:
        errors.append(RowError(row, "longitude", f"{longitude} is outside -180..180"))
    if (latitude is None) != (longitude is None) and not any(
            e.field in ("latitude", "longitude") for e in errors):
        errors.append(RowError(row, "latitude" if latitude is None else "longitude",
                               "latitude and longitude go together (both or neither)"))
    energised = _number(values.get("energised_mw"), "energised_mw", row, errors)
    planned = _number(values.get("planned_mw"), "planned_mw", row, errors)
    for field, mw in (("energised_mw", energised), ("planned_mw", planned)):
        if mw is not None and mw < 0:
            errors.append(RowError(row, field, f"must be >= 0, got {mw:g}"))
    if energised is None and planned is None and not any(
            e.field in ("energised_mw", "planned_mw") for e in errors):
        errors.append(RowError(row, "energised_mw",
                               "one of energised_mw and planned_mw is required"))
    status = _text(values.get("status")).lower()
    if status and status not in STATUSES:
        errors.append(RowError(row, "status",
                               f"{status!r} is not one of {', '.join(STATUSES)}"))
    as_of_text = _text(values.get("as_of"))
    as_of: datetime.date | None = None
    if as_of_text:
        try:
            as_of = datetime.date.fromisoformat(as_of_text)
        except ValueError:
            errors.append(RowError(row, "as_of", f"not a date (YYYY-MM-DD): {as_of_text!r}"))
    if errors or as_of is None:
        return None, errors
    return Site(operator=operator, site=site, country=country, subdivision=subdivision,
                latitude=latitude, longitude=longitude, energised_mw=energised,
                planned_mw=planned, status=status, as_of=as_of,
                source=_text(values.get("source")), notes=_text(values.get("notes")),
                row=row), []


def parse_rows(rows: Iterable[tuple[int, Mapping[str, object]]]) -> Registry:
    """Check numbered rows; good rows are kept, each bad value is reported."""
    sites: list[Site] = []
    errors: list[RowError] = []
    for number, values in rows:
        site, row_errors = parse_row(values, number)
        if site is not None:
            sites.append(site)
        errors.extend(row_errors)
    return Registry(tuple(sites), tuple(errors))


def parse_csv(text: str) -> Registry:
    """A CSV registry (header line 1); row numbers are the CSV's line numbers."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if not header or missing:
        raise RegistryError("line 1: missing column(s) " + ", ".join(missing or REQUIRED_COLUMNS))
    if "energised_mw" not in header and "planned_mw" not in header:
        raise RegistryError("line 1: missing column(s) energised_mw, planned_mw")

    def numbered() -> Iterable[tuple[int, Mapping[str, object]]]:
        for values in reader:
            if any(_text(v) for k, v in values.items() if k is not None):
                yield reader.line_num, values

    return parse_rows(numbered())


def parse_geojson(text: str) -> Registry:
    """A GeoJSON FeatureCollection: properties as the CSV's columns, a Point geometry
    ``[longitude, latitude]`` (optional). Row numbers count features from 1."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise RegistryError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        raise RegistryError("not a GeoJSON FeatureCollection")
    features = document.get("features")
    if not isinstance(features, list):
        raise RegistryError("FeatureCollection without a features list")
    rows: list[tuple[int, Mapping[str, object]]] = []
    errors: list[RowError] = []
    for number, feature in enumerate(features, start=1):
        if not isinstance(feature, dict) or not isinstance(feature.get("properties"), dict):
            errors.append(RowError(number, "properties", "feature without properties"))
            continue
        values: dict[str, object] = dict(feature["properties"])
        geometry = feature.get("geometry")
        if isinstance(geometry, dict):
            coordinates = geometry.get("coordinates")
            if (geometry.get("type") != "Point" or not isinstance(coordinates, list)
                    or len(coordinates) < 2):
                errors.append(RowError(number, "geometry",
                                       "must be a Point [longitude, latitude]"))
                continue
            values["longitude"], values["latitude"] = coordinates[0], coordinates[1]
        rows.append((number, values))
    parsed = parse_rows(rows)
    return Registry(parsed.sites, tuple(sorted([*errors, *parsed.errors],
                                               key=lambda e: e.row)))


def parse_registry(text: str, name: str = "") -> Registry:
    """CSV or GeoJSON, by the name's suffix (``.geojson``/``.json``) or the text's first byte."""
    lowered = name.lower()
    if lowered.endswith((".geojson", ".json")) or (
            not lowered.endswith(".csv") and text.lstrip().startswith("{")):
        return parse_geojson(text)
    return parse_csv(text)


def combine(base: Sequence[Site], extra: Sequence[Site], mode: Mode) -> tuple[Site, ...]:
    """``replace``: only ``extra``. ``extend``: ``base`` plus ``extra``, where a row of
    ``extra`` replaces a base row of the same site and ``as_of``."""
    if mode == "replace":
        return tuple(extra)
    replaced = {(s.operator, s.site, s.as_of) for s in extra}
    kept = [s for s in base if (s.operator, s.site, s.as_of) not in replaced]
    return (*kept, *extra)


def to_geojson(sites: Iterable[Site]) -> dict[str, Any]:
    """A FeatureCollection (geometry null where the registry has no coordinates)."""
    features = []
    for site in sites:
        properties = site.as_dict()
        latitude, longitude = properties.pop("latitude"), properties.pop("longitude")
        geometry = (None if latitude is None or longitude is None
                    else {"type": "Point", "coordinates": [longitude, latitude]})
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def to_csv(sites: Iterable[Site]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for site in sites:
        row = site.as_dict()
        writer.writerow(["" if row[column] is None else row[column] for column in COLUMNS])
    return buffer.getvalue()


# ---- summaries ---------------------------------------------------------------------------------


def latest(sites: Iterable[Site], at: datetime.date | None = None) -> list[Site]:
    """Each site's state at ``at`` (default: its latest row); sites not yet described are left
    out. Sorted by operator and site."""
    found: dict[tuple[str, str], Site] = {}
    for site in sites:
        if at is not None and site.as_of > at:
            continue
        current = found.get(site.key)
        if current is None or site.as_of > current.as_of or (
                site.as_of == current.as_of and site.row > current.row):
            found[site.key] = site
    return [found[key] for key in sorted(found)]


def matches_region(site: Site, region: str) -> bool:
    """A country code matches its subdivisions too ('US' matches 'US-TX')."""
    code = region.upper()
    return site.country == code or site.subdivision == code


@dataclass(frozen=True)
class CapacityRow:
    key: str
    energised_mw: float
    planned_mw: float
    sites: int
    unstated_energised: int  # rows whose source did not state energised MW

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "energised_mw": self.energised_mw,
                "planned_mw": self.planned_mw, "sites": self.sites,
                "unstated_energised": self.unstated_energised}


def _group_key(site: Site, by: GroupBy) -> str:
    if by == "region":
        return site.region
    if by == "country":
        return site.country
    if by == "subdivision":
        return site.subdivision or site.country
    if by == "status":
        return site.status
    return site.operator


def summarise(sites: Iterable[Site], by: GroupBy) -> list[CapacityRow]:
    """Energised and planned MW per group, largest energised first (ties by key)."""
    groups: dict[str, list[Site]] = {}
    for site in sites:
        groups.setdefault(_group_key(site, by), []).append(site)
    rows = [CapacityRow(key, math.fsum(s.energised for s in members),
                        math.fsum(s.planned for s in members), len(members),
                        sum(1 for s in members if s.energised_mw is None))
            for key, members in groups.items()]
    return sorted(rows, key=lambda r: (-r.energised_mw, -r.planned_mw, r.key))


def totals(sites: Iterable[Site]) -> CapacityRow:
    members = list(sites)
    return CapacityRow("total", math.fsum(s.energised for s in members),
                       math.fsum(s.planned for s in members), len(members),
                       sum(1 for s in members if s.energised_mw is None))


def capacity_by_status(sites: Iterable[Site]) -> dict[str, dict[str, float]]:
    """``{status: {"energised_mw", "planned_mw"}}`` for every known status (zeros included)."""
    out = {status: {"energised_mw": 0.0, "planned_mw": 0.0} for status in STATUSES}
    for row in summarise(sites, "status"):
        out[row.key] = {"energised_mw": row.energised_mw, "planned_mw": row.planned_mw}
    return out


def region_history(sites: Sequence[Site], region: str) -> list[dict[str, Any]]:
    """The region's capacity by status at every ``as_of`` date of its rows, oldest first."""
    mine = [s for s in sites if matches_region(s, region)]
    history = []
    for day in sorted({s.as_of for s in mine}):
        state = latest(mine, day)
        history.append({"as_of": day.isoformat(), "sites": len(state),
                        "by_status": capacity_by_status(state)})
    return history


def moved_to_hpc(sites: Sequence[Site]) -> list[dict[str, Any]]:
    """Energised MW moved from bitcoin mining to HPC, per date and cumulative, oldest first."""
    by_site: dict[tuple[str, str], list[Site]] = {}
    for site in sites:
        by_site.setdefault(site.key, []).append(site)
    moves: dict[datetime.date, list[tuple[str, str, float]]] = {}
    for key, rows in by_site.items():
        last_mining: Site | None = None
        previous: Site | None = None
        for row in sorted(rows, key=lambda s: (s.as_of, s.row)):
            if (row.status == "hpc" and previous is not None and previous.status == "mining"
                    and last_mining is not None):
                moves.setdefault(row.as_of, []).append((key[0], key[1], last_mining.energised))
            if row.status == "mining":
                last_mining = row
            previous = row
    out = []
    cumulative = 0.0
    for day in sorted(moves):
        moved = math.fsum(mw for _, _, mw in moves[day])
        cumulative += moved
        out.append({"as_of": day.isoformat(), "moved_mw": moved, "cumulative_mw": cumulative,
                    "sites": [f"{operator} / {site}" for operator, site, _ in moves[day]]})
    return out


def mining_capacity_w(sites: Iterable[Site]) -> dict[str, float]:
    """Energised mining capacity (W) per country and per subdivision (a country includes its
    subdivisions), from sites in a mining state; regions with none are left out."""
    out: dict[str, float] = {}
    for site in sites:
        if site.status not in MINING_STATUSES or not site.energised:
            continue
        watts = site.energised * W_PER_MW
        out[site.country] = out.get(site.country, 0.0) + watts
        if site.subdivision:
            out[site.subdivision] = out.get(site.subdivision, 0.0) + watts
    return out


Band = tuple[float, float, float]  # lower, best, upper


def share_band(public_w: float, network_band_w: Band) -> Band:
    """Public miners' capacity as a share of an estimated network power band: (lower, best,
    upper) share, the lower share from the upper power and vice versa."""
    lower_w, best_w, upper_w = network_band_w
    if not (0 < lower_w <= best_w <= upper_w) or public_w < 0:
        raise ValueError("need 0 < lower <= best <= upper power and public capacity >= 0")
    return public_w / upper_w, public_w / best_w, public_w / lower_w


def utilisation(power_band_w: Band, capacity_w: float) -> Band | None:
    """Estimated power ÷ mining capacity with its interval; None without capacity. Above 1 means
    the region draws more than the registry's (public miners') capacity."""
    if capacity_w <= 0:
        return None
    lower, best, upper = power_band_w
    return lower / capacity_w, best / capacity_w, upper / capacity_w


def site_utilisation(entries: Iterable[Mapping[str, Any]],
                     capacity_w: Mapping[str, float]) -> list[dict[str, Any]]:
    """Utilisation per snapshot region entry that has a power band and registry capacity."""
    out = []
    for entry in entries:
        region = str(entry.get("region"))
        band = entry.get("power_w")
        capacity = capacity_w.get(region, 0.0)
        if not isinstance(band, Mapping) or capacity <= 0:
            continue
        try:
            values = (float(band["lower"]), float(band["best"]), float(band["upper"]))
        except (KeyError, TypeError, ValueError):
            continue
        ratio = utilisation(values, capacity)
        if ratio is None:
            continue
        out.append({"region": region, "mining_capacity_w": capacity,
                    "utilisation": {"lower": ratio[0], "best": ratio[1], "upper": ratio[2]}})
    return out


def top_regions(sites: Iterable[Site], limit: int) -> list[str]:
    """The ``limit`` regions (finest level) with most energised MW; the rest go to ``other``."""
    return [row.key for row in summarise(sites, "region")[:limit]]
