"""``GET /v1/estimates/current`` (the snapshot, served as stored) and
``GET /v1/estimates/history`` (a region's or the network's history)."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from api.deps import SettingsDep, StoreDep
from api.history import (
    CSV_MEDIA_TYPE,
    MAX_HISTORY_POINTS,
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
from api.models.estimates import HistoryResponse
from api.models.examples import EXAMPLE_SNAPSHOT
from api.problems import not_found, problem_responses
from api.regions import REGION_CODE_PATTERN, is_known_region, unknown_region_detail
from api.snapshots import CURRENT_PATH, JSON_MEDIA_TYPE, answer_current
from streams.models.snapshot import EstimateSnapshot
from streams.rediskeys import NETWORK_SERIES

CSV_COLUMNS = ("t", "share", "hashrate_hs", "power_w_best")
ETAG_HEADERS = {
    "ETag": {"description": "Strong tag of this snapshot's body", "schema": {"type": "string"}},
    "Cache-Control": {"description": "public, max-age=<snapshot interval>",
                      "schema": {"type": "string"}},
}

router = APIRouter(tags=["estimates"])


@router.get(
    CURRENT_PATH,
    summary="The current estimate snapshot",
    description=(
        "Network hashrate (with its 95% interval and sources), electrical power and energy "
        "bands, hashprice and every region's share, hashrate and power, as last published. "
        "If the snapshot is older than the staleness limit it is still served, with "
        '`"stale": true`. Send `If-None-Match` with the last `ETag` to poll cheaply (304).'
    ),
    response_model=EstimateSnapshot,
    openapi_extra={"parameters": [{
        "name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
        "description": "ETag of a copy the client holds; a match answers 304 with no body"}]},
    responses={
        200: {"headers": ETAG_HEADERS,
              "content": {JSON_MEDIA_TYPE: {"example": EXAMPLE_SNAPSHOT}}},
        304: {"description": "Not modified: the client's copy is current"},
        **problem_responses(503),
    },
)
async def current_estimate(request: Request) -> Response:
    # Successful GETs are normally answered by CurrentEstimateFastPath before routing; this
    # route documents the endpoint and answers whatever the fast path hands on (problems).
    answer = await answer_current(request.app.state, request.headers.get("if-none-match"),
                                  "gzip" in request.headers.get("accept-encoding", ""))
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = answer.headers
    return response


@router.get(
    "/v1/estimates/history",
    summary="A region's (or the network's) estimate history",
    description=(
        "Points `{t, share, hashrate_hs, power_w_best}` with `start <= t <= end`, oldest first. "
        "`region` omitted gives the network (share 1). Default span: the last 24 h. `step` "
        "must be at least the stored step; a larger step keeps the **last stored point of each "
        "step-long bucket** (buckets aligned to multiples of `step` since the epoch), with its "
        f"own `t`. At most {MAX_HISTORY_POINTS:,} buckets per request. `format=csv` or "
        "`Accept: text/csv` gives CSV with header `t,share,hashrate_hs,power_w_best`."
    ),
    response_model=HistoryResponse,
    responses={
        200: {"content": {"text/csv": {
            "schema": {"type": "string"},
            "example": "t,share,hashrate_hs,power_w_best\r\n1732399940.0,0.377,2.79e+20,7.1e9\r\n",
        }}},
        **problem_responses(404, 422, 503),
    },
)
async def estimate_history(
    store: StoreDep,
    settings: SettingsDep,
    region: Annotated[str | None, Query(pattern=REGION_CODE_PATTERN, examples=["US"],
                                        description="region code; omit for the network")] = None,
    start: HistoryStart = None,
    end: HistoryEnd = None,
    step: HistoryStep = None,
    output_format: HistoryFormatQuery = None,
    accept: AcceptHeader = None,
) -> Response:
    stored_step = settings.history_step_s
    start, end, step = history_span(start, end, step, stored_step)
    code = region.upper() if region is not None else None
    rows = await store.history(code or NETWORK_SERIES, start, end)
    if not rows and code is not None and not is_known_region(code):
        raise not_found(unknown_region_detail(code))
    points = json_array_of_objects(last_point_per_step(rows, step, stored_step))
    headers = {"Vary": "Accept"}
    if wants_csv(output_format, accept):
        name = code or NETWORK_SERIES
        headers["Content-Disposition"] = f'inline; filename="hashatlas-history-{name}.csv"'
        return Response(points_csv(points, CSV_COLUMNS), media_type=CSV_MEDIA_TYPE,
                        headers=headers)
    body = {"region": code, "start": start, "end": end, "step": step, "points": points}
    return Response(orjson.dumps(body), media_type=JSON_MEDIA_TYPE, headers=headers)
