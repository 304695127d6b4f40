"""``GET /v1/stream``: estimates and alerts as Server-Sent Events, as the pipeline publishes
them."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from api.deps import SettingsDep, StoreDep
from api.metrics import RequestMetrics
from api.problems import problem_responses
from api.snapshots import is_stale
from api.sse import KEEPALIVE_S, SSE_MEDIA_TYPE, EventStreamResponse, format_event

router = APIRouter(tags=["stream"])


@router.get(
    "/v1/stream",
    summary="Live estimates and alerts (Server-Sent Events)",
    description=(
        "`event: estimate` (data: the snapshot, as `/v1/estimates/current`) and `event: alert` "
        "(data: an alert) as the pipeline publishes them, each with an `id:` line. The stream "
        "opens with the current snapshot, if any. A comment line is sent after "
        f"{KEEPALIVE_S:g} s without events."
    ),
    response_class=EventStreamResponse,
    status_code=200,
    responses={
        200: {"content": {SSE_MEDIA_TYPE: {
            "schema": {"type": "string"},
            "example": 'id: estimate-1732400000.0\nevent: estimate\ndata: {"as_of": ...}\n\n'}}},
        **problem_responses(503),
    },
)
async def stream(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    pubsub = store.streams_redis.pubsub()
    try:
        await pubsub.subscribe(store.keys.events_channel)
        stored = await store.snapshot()  # after subscribing: no event can fall in between
        first_frame = b""
        if stored is not None:
            body = orjson.loads(stored.json)
            if is_stale(stored.published_at, settings, time.time()):
                body["stale"] = True
            first_frame = format_event("estimate", body)
    except BaseException:
        await pubsub.aclose()
        raise
    metrics: RequestMetrics = request.app.state.request_metrics
    return EventStreamResponse(pubsub, first_frame, keepalive_s=request.app.state.sse_keepalive_s,
                               clients=metrics.sse_clients)
