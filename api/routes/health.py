"""``GET /healthz`` (liveness) and ``GET /readyz`` (Redis reachable, snapshot fresh)."""

from __future__ import annotations

import math
import time

from fastapi import APIRouter

from api.deps import SettingsDep, StoreDep
from api.models.operations import Health, Readiness
from api.problems import problem_responses, service_unavailable
from api.snapshots import no_snapshot

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process is up",
            description="Does not touch Redis.", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: Redis reachable and the snapshot fresh",
    description="503 problem if Redis is unreachable, no snapshot exists, or the snapshot is "
    "older than the staleness limit; the detail says which.",
    response_model=Readiness,
    responses=problem_responses(503),
)
async def readyz(store: StoreDep, settings: SettingsDep) -> Readiness:
    published_at = await store.published_at()
    if published_at is None:
        raise no_snapshot(settings)
    age = time.time() - published_at
    if age > settings.stale_after_s:
        raise service_unavailable(
            "stale-estimate",
            f"snapshot is {age:.1f} s old (limit {settings.stale_after_s:g} s)",
            math.ceil(settings.snapshot_interval_s),
        )
    return Readiness(status="ready", snapshot_age_s=max(0.0, age))
