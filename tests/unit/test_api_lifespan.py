"""The API freezes its start-up heap while it serves (a full collection of it stalled every
request in flight for up to 66 ms) and releases it at shutdown."""

from __future__ import annotations

import gc

from api.main import create_app
from streams.settings import Settings


async def test_the_start_up_heap_is_frozen_while_serving_and_released_at_shutdown() -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:9/0"))
    assert gc.get_freeze_count() == 0
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 10_000  # modules, routes, models: all of start-up
    assert gc.get_freeze_count() == 0
