"""The API's routes, one module per resource; ``ROUTERS`` is what the app includes, in order."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import (
    alerts,
    estimates,
    health,
    metrics,
    network,
    pools,
    regions,
    sites,
    stream,
)

ROUTERS: tuple[APIRouter, ...] = (
    estimates.router, regions.router, network.router, alerts.router, stream.router,
    metrics.router, health.router, sites.router, pools.router,
)
