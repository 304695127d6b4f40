"""``GET /metrics``: the API's request metrics and the current snapshot's gauges (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from api.deps import SettingsDep, StoreDep
from api.metrics import METRICS_CONTENT_TYPE, render_metrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="The API's request metrics and the current snapshot's gauges (read from Redis "
    "at scrape time). Answers 200 even when Redis is down (`hashatlas_api_redis_up 0`).",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def prometheus_metrics(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    body = await render_metrics(store, request.app.state.request_metrics, settings.stale_after_s,
                                sites=request.app.state.sites)
    return Response(body, media_type=METRICS_CONTENT_TYPE)
