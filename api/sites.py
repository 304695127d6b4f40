"""Mining sites and their power capacity over HTTP: ``GET /v1/sites`` and ``GET /v1/capacity``.

Served from the site registry loaded when the app starts (the shipped streams/data/sites.csv,
extended or replaced by ``sites_file``); no Redis read. Errors are RFC 7807 problems like the
rest of the API: a bad filter is a 422 naming it, an unknown region code a 404.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from api.problems import invalid_parameter, not_found, problem_responses
from streams.core import sites as core
from streams.core.regions import region_name

REGION_CODE_PATTERN = r"^[A-Za-z]{2}(-[A-Za-z0-9]{1,3})?$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
JSON_MEDIA_TYPE = "application/json"
GEOJSON_MEDIA_TYPE = "application/geo+json"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
#: Regions labelled by name in the capacity metrics; the rest are summed under ``other``.
METRIC_TOP_REGIONS = 10
OTHER_REGION = "other"

router = APIRouter()


class SitesFormat(StrEnum):
    json = "json"
    csv = "csv"
    geojson = "geojson"


Status = StrEnum("Status", {status: status for status in core.STATUSES})  # type: ignore[misc]

EXAMPLE_SITE: dict[str, Any] = {
    "operator": "Riot Platforms", "site": "Rockdale Facility", "country": "US",
    "subdivision": "US-TX", "region": "US-TX", "latitude": None, "longitude": None,
    "energised_mw": 700.0, "planned_mw": None, "status": "mining", "as_of": "2025-06-30",
    "source": "Riot Platforms 10-Q for the period ended 30 Jun 2025, Note 1 Organization "
              "https://www.sec.gov/Archives/edgar/data/1167419/000155837025009896/R8.htm",
    "notes": "700 MW of total developed capacity",
}


class SiteEntry(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": EXAMPLE_SITE})

    operator: str
    site: str
    country: str
    subdivision: str | None
    region: str
    latitude: float | None
    longitude: float | None
    energised_mw: float | None
    planned_mw: float | None
    status: str
    as_of: str
    source: str
    notes: str


class SitesResponse(BaseModel):
    """Sites of the registry (each one's latest row, or its row at ``at``, or every row with
    ``history=true``)."""

    at: str | None
    count: int
    sites: list[SiteEntry]


class StatusCapacity(BaseModel):
    energised_mw: float
    planned_mw: float


class CapacityPoint(BaseModel):
    as_of: str
    sites: int
    by_status: dict[str, StatusCapacity]


class CapacityResponse(BaseModel):
    """A region's capacity by status now (each site's latest row) and at every date of its
    rows; a country includes its subdivisions."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "region": "US-TX", "name": "Texas", "sites": 12,
        "energised_mw": 1474.0, "planned_mw": 1659.0,
        "by_status": {"mining": {"energised_mw": 1474.0, "planned_mw": 700.0}},
        "history": [{"as_of": "2024-11-21", "sites": 7,
                     "by_status": {"hpc": {"energised_mw": 0.0, "planned_mw": 394.0}}}],
        "moved_to_hpc": [{"as_of": "2024-11-21", "moved_mw": 125.0, "cumulative_mw": 125.0,
                          "sites": ["Core Scientific / Denton"]}]}})

    region: str
    name: str
    sites: int
    energised_mw: float
    planned_mw: float
    by_status: dict[str, StatusCapacity]
    history: list[CapacityPoint]
    moved_to_hpc: list[dict[str, Any]]


def _date(text: str | None) -> datetime.date | None:
    """A ``YYYY-MM-DD`` query value (pydantic's date would also take Unix seconds)."""
    if text is None:
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise invalid_parameter("at", f"not a calendar date: {text!r}") from None


def _known_region(code: str) -> bool:
    try:
        region_name(code)
    except ValueError:
        return False
    return True


def registry(request: Request) -> tuple[core.Site, ...]:
    sites: tuple[core.Site, ...] = request.app.state.sites
    return sites


@router.get(
    "/v1/sites",
    tags=["sites"],
    summary="Mining sites of public companies and their power capacity",
    description=(
        "One entry per site: its latest row (or its row on `at`), or every row of its status "
        "history with `history=true`. Filters: `region` (ISO 3166-1 or 3166-2; a country "
        "includes its subdivisions), `status`, `operator` (exact name). `format=csv` gives the "
        "registry's CSV columns, `format=geojson` a FeatureCollection (geometry null where no "
        "coordinates are public). Each entry names its public source and date."
    ),
    response_model=SitesResponse,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}},
                          GEOJSON_MEDIA_TYPE: {"schema": {"type": "object"}}}},
        **problem_responses(422),
    },
)
async def sites(
    request: Request,
    region: Annotated[str | None, Query(pattern=REGION_CODE_PATTERN, examples=["US-TX"],
                                        description="ISO 3166-1 or 3166-2 code")] = None,
    status: Annotated[Status | None, Query(description="site status")] = None,
    operator: Annotated[str | None, Query(max_length=200, examples=["Riot Platforms"])] = None,
    at: Annotated[str | None, Query(pattern=DATE_PATTERN, examples=["2024-06-30"],
                                    description="each site's state on this date (YYYY-MM-DD)")
                  ] = None,
    history: Annotated[bool, Query(description="every row, not only each site's latest")
                       ] = False,
    output_format: Annotated[SitesFormat, Query(alias="format")] = SitesFormat.json,
) -> Response:
    rows: Sequence[core.Site] = registry(request)
    day = _date(at)
    if region is not None:
        code = region.upper()
        if not _known_region(code):
            raise invalid_parameter("region", f"{code} is not an ISO 3166 country or "
                                    "subdivision code")
        rows = [s for s in rows if core.matches_region(s, code)]
    if operator is not None:
        operators = {s.operator for s in registry(request)}
        if operator not in operators:
            raise invalid_parameter("operator", f"no operator named {operator!r} in the "
                                    f"registry (known: {', '.join(sorted(operators))})")
        rows = [s for s in rows if s.operator == operator]
    if history:
        rows = sorted((s for s in rows if day is None or s.as_of <= day),
                      key=lambda s: (s.operator, s.site, s.as_of))
    else:
        rows = core.latest(rows, day)
    if status is not None:
        rows = [s for s in rows if s.status == status.value]
    if output_format is SitesFormat.csv:
        return Response(core.to_csv(rows), media_type=CSV_MEDIA_TYPE,
                        headers={"Content-Disposition": 'inline; filename="hashatlas-sites.csv"'})
    if output_format is SitesFormat.geojson:
        return Response(orjson.dumps(core.to_geojson(rows)), media_type=GEOJSON_MEDIA_TYPE)
    body = {"at": day.isoformat() if day else None, "count": len(rows),
            "sites": [s.as_dict() for s in rows]}
    return Response(orjson.dumps(body), media_type=JSON_MEDIA_TYPE)


@router.get(
    "/v1/capacity",
    tags=["sites"],
    summary="A region's mining-site capacity by status, with its history",
    description=(
        "Energised and planned MW by status (mining, hpc, mixed, curtailed, planned, closed) "
        "from each site's latest row, and the same at every `as_of` date of the region's rows, "
        "oldest first, plus the MW moved from mining to HPC. 404 for a code that is not ISO "
        "3166; a valid code without sites answers zeros."
    ),
    response_model=CapacityResponse,
    responses=problem_responses(404, 422),
)
async def capacity(
    request: Request,
    region: Annotated[str, Query(pattern=REGION_CODE_PATTERN, examples=["US-TX"],
                                 description="ISO 3166-1 or 3166-2 code")],
) -> Response:
    code = region.upper()
    if not _known_region(code):
        raise not_found(f"unknown region {code}: not an ISO 3166 country or subdivision code")
    rows = [s for s in registry(request) if core.matches_region(s, code)]
    state = core.latest(rows)
    total = core.totals(state)
    body = {"region": code, "name": region_name(code), "sites": total.sites,
            "energised_mw": total.energised_mw, "planned_mw": total.planned_mw,
            "by_status": core.capacity_by_status(state),
            "history": core.region_history(rows, code), "moved_to_hpc": core.moved_to_hpc(rows)}
    return Response(orjson.dumps(body), media_type=JSON_MEDIA_TYPE)


# ---- Prometheus ----------------------------------------------------------------------------


def site_metrics(sites: Sequence[core.Site], snapshot: dict[str, Any] | None) -> list[Metric]:
    """Capacity gauges with bounded labels (the top regions by energised MW, the rest as
    ``other``; the six statuses) and, where the snapshot has a region's power band, the
    utilisation of its mining capacity with the band's interval."""
    state = core.latest(sites)
    top = set(core.top_regions(state, METRIC_TOP_REGIONS))
    energised = GaugeMetricFamily(
        "hashatlas_site_capacity_watts",
        "Energised power capacity of the registry's mining sites (latest row of each), by "
        "region (top regions, the rest as other) and status", labels=["region", "status"])
    planned = GaugeMetricFamily(
        "hashatlas_site_planned_capacity_watts",
        "Announced, not yet energised capacity of the registry's sites, by region and status",
        labels=["region", "status"])
    sums: dict[tuple[str, str], tuple[float, float]] = {}
    for site in state:
        key = (site.region if site.region in top else OTHER_REGION, site.status)
        e, p = sums.get(key, (0.0, 0.0))
        sums[key] = (e + site.energised * core.W_PER_MW, p + site.planned * core.W_PER_MW)
    for (region, status), (e, p) in sorted(sums.items()):
        energised.add_metric([region, status], e)
        planned.add_metric([region, status], p)
    metrics: list[Metric] = [energised, planned]
    if snapshot is not None:
        capacity_w = core.mining_capacity_w(state)
        entries = [*(snapshot.get("regions") or []), *(snapshot.get("subdivisions") or [])]
        ratio = GaugeMetricFamily(
            "hashatlas_region_site_utilisation_ratio",
            "Estimated regional power band / energised mining capacity of the registry's sites "
            "(above 1: more power than the listed public miners' capacity)",
            labels=["region", "band"])
        for item in core.site_utilisation(entries, capacity_w):
            for band, value in item["utilisation"].items():
                ratio.add_metric([item["region"], band], value)
        metrics.append(ratio)
    return metrics


class SiteCollector:
    def __init__(self, sites: Sequence[core.Site], snapshot: dict[str, Any] | None) -> None:
        self.sites = sites
        self.snapshot = snapshot

    def collect(self) -> list[Metric]:
        return site_metrics(self.sites, self.snapshot)
