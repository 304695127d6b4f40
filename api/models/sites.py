"""Response models and query types of the site registry routes."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from api.models.examples import EXAMPLE_SITE
from streams.core import sites as core


class SitesFormat(StrEnum):
    json = "json"
    csv = "csv"
    geojson = "geojson"


Status = StrEnum("Status", {status: status for status in core.STATUSES})  # type: ignore[misc]


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
