"""hashatlas's own web page: a live map at ``/`` with its assets under ``/static``.

Everything the page needs (map geometry, d3-geo, topojson-client) is vendored in
``api/static/vendor`` with its licence, so the page makes no request beyond this API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse

STATIC_DIR = Path(__file__).parents[1] / "static"
PAGE = STATIC_DIR / "index.html"


def install_page(app: FastAPI) -> None:
    """Serve the map page at ``/`` and its files at ``/static`` (not in the OpenAPI schema)."""

    async def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
