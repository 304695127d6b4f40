"""``GET /v1/regions/{region}``: one region's entry of the current snapshot."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Path
from starlette.responses import Response

from api.deps import SettingsDep, StoreDep
from api.models.estimates import RegionResponse
from api.problems import not_found, problem_responses
from api.regions import REGION_CODE_PATTERN, is_known_region, unknown_region_detail
from api.routes.estimates import ETAG_HEADERS
from api.snapshots import (
    JSON_MEDIA_TYPE,
    cache_control,
    etag_matches,
    is_stale,
    no_snapshot,
    quoted_etag,
)

router = APIRouter(tags=["estimates"])
IfNoneMatch = Annotated[
    str | None,
    Header(description="ETag of a copy the client holds; a match answers 304 with no body"),
]


@router.get(
    "/v1/regions/{region}",
    summary="One region's current estimate",
    description=(
        "The region's entry from the current snapshot (ISO 3166-1 alpha-2 such as `US`, ISO "
        "3166-2 such as `US-TX`, or `ZZ` for unknown location; case-insensitive). A country "
        "lists its subdivisions in `subdivisions`, each also available here. 404 if the code "
        "is not an ISO code or the snapshot has no estimate for it. Supports `If-None-Match`."
    ),
    response_model=RegionResponse,
    responses={
        200: {"headers": ETAG_HEADERS},
        304: {"description": "Not modified: the client's copy is current"},
        **problem_responses(404, 422, 503),
    },
)
async def region_estimate(
    store: StoreDep,
    settings: SettingsDep,
    region: Annotated[str, Path(pattern=REGION_CODE_PATTERN, examples=["US", "US-TX"],
                                description="ISO 3166-1 alpha-2 or ISO 3166-2 code")],
    if_none_match: IfNoneMatch = None,
) -> Response:
    code = region.upper()
    head, entry = await store.head_and_region(code)
    if head is None:
        raise no_snapshot(settings)
    if entry is None:
        if is_known_region(code):
            raise not_found(f"no estimate for region {code} in the current snapshot")
        raise not_found(unknown_region_detail(code))
    stale = is_stale(head.published_at, settings, time.time())
    qualifiers = (code, "stale") if stale else (code,)
    etag = quoted_etag(head.etag, *qualifiers)
    headers = {"ETag": etag, "Cache-Control": cache_control(settings)}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    document = orjson.loads(entry)
    document["as_of"] = head.as_of
    document["stale"] = stale
    return Response(orjson.dumps(document), media_type=JSON_MEDIA_TYPE, headers=headers)
