"""The API process's lifetime: Redis clients open, and the start-up heap out of the collector.

Every object alive once the app has started (modules, routes, models, the OpenAPI schema) lives
as long as the process. Left to the collector, each full collection walked all of them: under
the latency bench's load the longest took 62.8–66.5 ms, and every request in flight waited
through it (closed-loop max latency 69–72 ms). Frozen, the longest took 1.9–2.0 ms (max latency
11–13 ms; `python -m bench.api_gc`, 2026-12-07, BENCHMARKS.md "Session 9"). The
heap is unfrozen at shutdown, so an app started and stopped inside a longer process (the tests)
leaves nothing beyond the collector's reach.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deps import redis_lifespan


@asynccontextmanager
async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with redis_lifespan(app):
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
