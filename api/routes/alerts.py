"""``GET /v1/alerts``: every alert once, in its latest state, newest state change first."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from api.deps import StoreDep, latest_alert_states
from api.models.estimates import AlertsResponse
from api.problems import problem_responses
from api.regions import REGION_CODE_PATTERN
from api.snapshots import JSON_MEDIA_TYPE

router = APIRouter(tags=["alerts"])


@router.get(
    "/v1/alerts",
    summary="Regional-shift alerts, newest first",
    description=(
        "Each alert once, in its latest state (`firing` or `resolved`), ordered by the time of "
        "that state change, newest first. `since` keeps alerts whose latest state change is at "
        "or after it (poll with the time of your last poll); `region` keeps that region's "
        "alerts (a country code also matches its subdivisions)."
    ),
    response_model=AlertsResponse,
    responses=problem_responses(422, 503),
)
async def alerts(
    store: StoreDep,
    since: Annotated[float | None, Query(ge=0, allow_inf_nan=False,
                                         description="Unix seconds")] = None,
    region: Annotated[str | None, Query(pattern=REGION_CODE_PATTERN, examples=["KZ"])] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many (1 to 1000)")] = 100,
) -> Response:
    found = latest_alert_states(await store.alert_records(since))
    if region is not None:
        code = region.upper()
        found = [alert for alert in found
                 if alert.get("region") == code or str(alert.get("region")).startswith(code + "-")]
    return Response(orjson.dumps({"alerts": found[:limit]}), media_type=JSON_MEDIA_TYPE)
