"""Mining sites and their power capacity over HTTP: ``GET /v1/sites`` and ``GET /v1/capacity``.

Served from the site registry loaded when the app starts (the shipped streams/data/sites.csv,
extended or replaced by ``sites_file``); no Redis read. Errors are RFC 7807 problems like the
rest of the API: a bad filter is a 422 naming it, an unknown region code a 404.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from api.history import CSV_MEDIA_TYPE
from api.models.sites import CapacityResponse, SitesFormat, SitesResponse, Status
from api.problems import invalid_parameter, not_found, problem_responses
from api.regions import REGION_CODE_PATTERN, unknown_region_detail
from api.snapshots import JSON_MEDIA_TYPE
from streams.core import sites as core
from streams.core.regions import region_name

DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
GEOJSON_MEDIA_TYPE = "application/geo+json"

router = APIRouter(tags=["sites"])


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
        raise not_found(unknown_region_detail(code))
    rows = [s for s in registry(request) if core.matches_region(s, code)]
    state = core.latest(rows)
    total = core.totals(state)
    body = {"region": code, "name": region_name(code), "sites": total.sites,
            "energised_mw": total.energised_mw, "planned_mw": total.planned_mw,
            "by_status": core.capacity_by_status(state),
            "history": core.region_history(rows, code), "moved_to_hpc": core.moved_to_hpc(rows)}
    return Response(orjson.dumps(body), media_type=JSON_MEDIA_TYPE)
