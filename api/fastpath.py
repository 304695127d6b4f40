"""Middleware for the hottest path: ``GET /v1/estimates/current`` answered in pure ASGI ahead of
routing, and Starlette's GZip for every route but that one (it compresses and caches its own).
"""

from __future__ import annotations

from starlette.datastructures import State
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.snapshots import CURRENT_PATH, GZIP_MINIMUM_BYTES, answer_current


class GZipExceptPrecompressed:
    """Starlette's GZip for every route but those that compress (and cache) their own bodies.

    The current-estimate route serves a gzip body made once per snapshot; sending it through
    the middleware as well would only add per-request header parsing to the hottest path.
    """

    def __init__(self, app: ASGIApp, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=GZIP_MINIMUM_BYTES)
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
        else:
            await self.gzip(scope, receive, send)


class CurrentEstimateFastPath:
    """Answers ``GET /v1/estimates/current`` in pure ASGI, ahead of routing.

    This is the endpoint pollers hammer; FastAPI's routing, request objects and exception
    middleware would cost it more than its Redis read. Anything but a successful answer (no
    snapshot yet, Redis down) is handed on to the route, so errors stay problem documents made
    in one place. The request metrics still see the route template (``scope["route"]``).
    """

    def __init__(self, app: ASGIApp, state: State, route: BaseRoute) -> None:
        self.app = app
        self.state = state
        self.route = route  # the documented route, for the request metrics' route label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CURRENT_PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if_none_match: list[str] = []
        gzip_accepted = False
        for name, value in scope["headers"]:  # ASGI header names are lower case
            if name == b"if-none-match":
                if_none_match.append(value.decode("latin-1"))
            elif name == b"accept-encoding":
                gzip_accepted = gzip_accepted or b"gzip" in value
        try:
            answer = await answer_current(self.state, ",".join(if_none_match), gzip_accepted)
        except Exception:
            await self.app(scope, receive, send)  # the route answers with the problem
            return
        scope["route"] = self.route
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": answer.headers})
        await send({"type": "http.response.body", "body": answer.body})

