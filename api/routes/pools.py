"""Pool endpoints: the snapshot's ``pools`` section, one pool, and a pool's history.

Served from what the leader published (the snapshot and the ``pool:<slug>`` history series);
nothing is recomputed. Errors follow the API's RFC 7807 patterns: an unknown pool is a 404
problem, a bad parameter a 422 naming it.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path
from starlette.responses import Response

from api.deps import SettingsDep, StoreDep
from api.history import (
    CSV_MEDIA_TYPE,
    AcceptHeader,
    HistoryEnd,
    HistoryFormatQuery,
    HistoryStart,
    HistoryStep,
    history_span,
    json_array_of_objects,
    last_point_per_step,
    points_csv,
    wants_csv,
)
from api.models.pools import PoolHistoryResponse, PoolResponse, PoolsResponse
from api.problems import not_found, problem_responses
from api.snapshots import JSON_MEDIA_TYPE, is_stale, no_snapshot

POOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"
POOL_CSV_COLUMNS = ("t", "hashrate_hs", "hashrate_lower_hs", "hashrate_upper_hs", "work_share",
                    "hashrate_2016_hs", "sample_hashrate_hs", "luck_144", "luck_2016", "status")
PoolSlug = Annotated[str, Path(pattern=POOL_PATTERN, examples=["foundry-usa"],
                               description="pool slug")]

router = APIRouter(tags=["pools"])


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
    summary="One pool's hashrate, luck, validation and attribution",
    description="The pool's entry (by slug, e.g. `foundry-usa`; case-insensitive). 404 if the "
    "current snapshot has no such pool.",
    response_model=PoolResponse,
    responses=problem_responses(404, 422, 503),
)
async def pool_entry(store: StoreDep, settings: SettingsDep, pool: PoolSlug) -> Response:
    section = await _pools_section(store, settings)
    slug = _pool_slug(pool)
    entry = next((e for e in section.get("pools") or [] if e.get("pool") == slug), None)
    if entry is None:
        raise not_found(f"no pool {slug} in the current snapshot")
    body = {**entry, "as_of": section["as_of"], "stale": section["stale"]}
    return Response(orjson.dumps(body), media_type=JSON_MEDIA_TYPE)


@router.get(
    "/v1/pools/{pool}/history",
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
    pool: PoolSlug,
    start: HistoryStart = None,
    end: HistoryEnd = None,
    step: HistoryStep = None,
    output_format: HistoryFormatQuery = None,
    accept: AcceptHeader = None,
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
    if wants_csv(output_format, accept):
        headers["Content-Disposition"] = f'inline; filename="hashatlas-pool-{slug}.csv"'
        return Response(points_csv(points, POOL_CSV_COLUMNS), media_type=CSV_MEDIA_TYPE,
                        headers=headers)
    body = {"pool": slug, "start": start, "end": end, "step": step, "points": points}
    return Response(orjson.dumps(body), media_type=JSON_MEDIA_TYPE, headers=headers)
