"""The hashatlas HTTP API: serves what the pipeline last wrote to Redis, never recomputes it.

Read-only by design (no write endpoints), CORS closed unless ``cors_origins`` lists origins,
every error an RFC 7807 problem. ``GET /v1/estimates/current`` is the endpoint pollers hammer,
so it costs one Redis round trip and passes the stored JSON bytes through untouched; bodies
derived from a snapshot (gzip, the ``stale`` patch) are computed once per snapshot, not per request.

This module only wires the parts together: routes (``api/routes/``, one module per resource),
their models (``api/models/``, the snapshot's in ``streams/models/snapshot.py``), problems,
middleware and the OpenAPI description. No app is built at import: call :func:`create_app`
(``uvicorn --factory api.main:create_app`` reads the settings from the environment).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.fastpath import CurrentEstimateFastPath, GZipExceptPrecompressed
from api.lifespan import app_lifespan
from api.metrics import RequestMetrics, RequestMetricsMiddleware
from api.openapi import API_DESCRIPTION, install_openapi, package_version
from api.problems import install_problem_handlers
from api.routes import ROUTERS, estimates
from api.routes.page import install_page
from api.snapshots import CURRENT_PATH, SnapshotBodies
from api.sse import KEEPALIVE_S
from streams.commands.sites import load_sites
from streams.settings import Settings, get_settings


def create_app(
    settings: Settings | None = None, *, sse_keepalive_s: float = KEEPALIVE_S
) -> FastAPI:
    """A fresh app bound to ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(title="hashatlas", version=package_version(), description=API_DESCRIPTION,
                  lifespan=app_lifespan)
    request_metrics = RequestMetrics()
    app.state.settings = settings
    app.state.request_metrics = request_metrics
    app.state.snapshot_bodies = SnapshotBodies()
    app.state.sse_keepalive_s = sse_keepalive_s
    app.state.sites = load_sites(settings, warn=logging.getLogger("hashatlas.api").warning)
    install_problem_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_page(app)
    # add_middleware wraps: the last added is the outermost. Outside in: request metrics,
    # CORS (only if origins are configured), the current-estimate fast path, GZip.
    app.add_middleware(GZipExceptPrecompressed, exempt_paths=frozenset({CURRENT_PATH}))
    current_route = next(route for route in estimates.router.routes
                         if getattr(route, "path", None) == CURRENT_PATH)
    app.add_middleware(CurrentEstimateFastPath, state=app.state, route=current_route)
    cors_origins = settings.cors_origins
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET"],
                           allow_headers=["Accept", "If-None-Match"],
                           expose_headers=["ETag", "Retry-After"])
    app.add_middleware(RequestMetricsMiddleware, metrics=request_metrics)
    install_openapi(app, settings)
    return app
