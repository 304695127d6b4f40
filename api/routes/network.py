"""``GET /v1/network/blocks``: the most recent blocks of the best chain."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from api.deps import StoreDep
from api.history import json_array_of_objects
from api.models.estimates import BlocksResponse
from api.problems import problem_responses
from api.snapshots import JSON_MEDIA_TYPE

router = APIRouter(tags=["network"])


@router.get(
    "/v1/network/blocks",
    summary="Recent blocks",
    description="The most recent blocks of the best chain (highest first), with height, hash, "
    "time, pool, difficulty, work, subsidy and fees (satoshi).",
    response_model=BlocksResponse,
    responses=problem_responses(422, 503),
)
async def recent_blocks(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="how many blocks (1 to 1000)")] = 20,
) -> Response:
    members = await store.blocks(limit)
    json_array_of_objects(members)  # reject corrupt data rather than emit invalid JSON
    # Stored bytes pass through: block work exceeds 64 bits, which a parse/dump could round.
    return Response(b'{"blocks":[' + b",".join(members) + b"]}", media_type=JSON_MEDIA_TYPE)
