"""Pool endpoints: the snapshot's ``pools`` section, one pool, and a pool's history.

Served from what the leader published (the snapshot and the ``pool:<slug>`` history series);
nothing is recomputed. Errors follow the API's RFC 7807 patterns: an unknown pool is a 404
problem, a bad parameter a 422 naming it.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from api.deps import SettingsDep, StoreDep
from api.main import (
    CSV_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    HistoryFormat,
    history_span,
    is_stale,
    json_array_of_objects,
    last_point_per_step,
    no_snapshot,
    prefers_csv,
)
from api.problems import not_found, problem_responses

POOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"
POOL_CSV_COLUMNS = ("t", "hashrate_hs", "hashrate_lower_hs", "hashrate_upper_hs", "work_share",
                    "hashrate_2016_hs", "sample_hashrate_hs", "luck_144", "luck_2016", "status")

router = APIRouter()


class PoolEntry(BaseModel):
    """One pool: hashrate from blocks per window, luck and validation (sampled pools)."""

    model_config = ConfigDict(extra="allow")

    pool: str
    name: str
    sampled: bool
    hashrate: dict[str, Any]
    luck: dict[str, Any] | None = None
    validation: dict[str, Any]


class PoolsResponse(BaseModel):
    """The snapshot's pools section, largest pool first."""

    model_config = ConfigDict(extra="allow")

    as_of: float
    stale: bool
    pools: list[PoolEntry]


class PoolHistoryResponse(BaseModel):
    pool: str
    start: float
    end: float
    step: float
    points: list[dict[str, Any]]


async def _pools_section(store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    stored = await store.snapshot()
    if stored is None:
        raise no_snapshot(settings)
    snapshot = orjson.loads(stored.json)
    section = dict(snapshot.get("pools") or {"pools": []})
    section["as_of"] = snapshot.get("as_of")
    section["stale"] = bool(snapshot.get("stale")) or is_stale(
        stored.published_at, settings, time.time())
    return section


@router.get(
    "/v1/pools",
    tags=["pools"],
    summary="Every pool: hashrate from blocks, luck, validation, attribution, hashprice",
    description=(
        "The current snapshot's `pools` section: per pool its hashrate over the last 144, 1008 "
        "and 2016 blocks (work share × network hashrate, 95 % intervals carrying both the block "
        "count and the network estimate), for sampled pools luck (found ÷ expected, Garwood "
        "interval) and validation (`consistent`, `diverging` with evidence, "
        "`insufficient_blocks`, `not_sampled`); `attribution` (how blocks were attributed, "
        "Unknown's work share) and `hashprice` (sat/TH/day, USD/PH/day, FPPS) for the chain."
    ),
    response_model=PoolsResponse,
    responses=problem_responses(503),
)
async def pools(store: StoreDep, settings: SettingsDep) -> Response:
    section = await _pools_section(store, settings)
    return Response(orjson.dumps(section), media_type=JSON_MEDIA_TYPE)


def _pool_slug(pool: str) -> str:
    return pool.lower()


@router.get(
    "/v1/pools/{pool}",
    tags=["pools"],
    summary="One pool's hashrate, luck, validation and attribution",
    description="The pool's entry (by slug, e.g. `foundry-usa`; case-insensitive). 404 if the "
    "current snapshot has no such pool.",
    response_model=PoolEntry,
    responses=problem_responses(404, 422, 503),
)
async def pool_entry(
    store: StoreDep,
    settings: SettingsDep,
    pool: Annotated[str, Path(pattern=POOL_PATTERN, examples=["foundry-usa"],
                              description="pool slug")],
) -> Response:
    section = await _pools_section(store, settings)
    slug = _pool_slug(pool)
    entry = next((e for e in section.get("pools") or [] if e.get("pool") == slug), None)
    if entry is None:
        raise not_found(f"no pool {slug} in the current snapshot")
    body = {**entry, "as_of": section["as_of"], "stale": section["stale"]}
    return Response(orjson.dumps(body), media_type=JSON_MEDIA_TYPE)


def pool_history_csv(points: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(POOL_CSV_COLUMNS)
    for point in points:
        writer.writerow(["" if point.get(column) is None else point[column]
                         for column in POOL_CSV_COLUMNS])
    return buffer.getvalue().encode()


@router.get(
    "/v1/pools/{pool}/history",
    tags=["pools"],
    summary="A pool's history",
    description=(
        "Points with `start <= t <= end`, oldest first: hashrate over the last 144 blocks with "
        "its 95 % interval, work share, 2016-block hashrate, sampled hashrate, luck over 144 and "
        "2016 blocks, validation status. Kept for the largest pools and the sampled ones. Same "
        "`step` rules as `/v1/estimates/history`; `format=csv` or `Accept: text/csv` gives CSV "
        f"with header `{','.join(POOL_CSV_COLUMNS)}`."
    ),
    response_model=PoolHistoryResponse,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **problem_responses(404, 422, 503),
    },
)
async def pool_history(
    store: StoreDep,
    settings: SettingsDep,
    pool: Annotated[str, Path(pattern=POOL_PATTERN, examples=["foundry-usa"],
                              description="pool slug")],
    start: Annotated[float | None, Query(ge=0, allow_inf_nan=False,
                                         description="Unix seconds (default: end − 24 h)")] = None,
    end: Annotated[float | None, Query(ge=0, allow_inf_nan=False,
                                       description="Unix seconds (default: now)")] = None,
    step: Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                        description="seconds (default: the stored step)")] = None,
    output_format: Annotated[HistoryFormat | None, Query(alias="format")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    stored_step = settings.history_step_s
    start, end, step = history_span(start, end, step, stored_step)
    slug = _pool_slug(pool)
    rows = await store.history(f"pool:{slug}", start, end)
    if not rows:
        section = await _pools_section(store, settings)
        if not any(e.get("pool") == slug for e in section.get("pools") or []):
            raise not_found(f"no pool {slug}: not in the current snapshot and no history kept")
    points = json_array_of_objects(last_point_per_step(rows, step, stored_step))
    headers = {"Vary": "Accept"}
    if output_format is HistoryFormat.csv or (output_format is None and prefers_csv(accept)):
        headers["Content-Disposition"] = f'inline; filename="hashatlas-pool-{slug}.csv"'
        return Response(pool_history_csv(points), media_type=CSV_MEDIA_TYPE, headers=headers)
    body = {"pool": slug, "start": start, "end": end, "step": step, "points": points}
    return Response(orjson.dumps(body), media_type=JSON_MEDIA_TYPE, headers=headers)
