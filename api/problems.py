"""RFC 7807 problem responses, so every error a client sees has the same machine-readable shape.

Clients (pollers, dashboards) branch on ``status`` and ``type`` and show ``detail``; a bad
parameter is named in ``invalid_params`` so a caller can fix its request without reading logs.
Nothing here ever puts a stack trace or an internal message into a response body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:hashatlas:problem:"
REDIS_RETRY_AFTER_S = 5
#: Redis failures that are the store's state, not the request's: unreachable, too slow, a wrong
#: password (AuthenticationError is a ConnectionError) or an ACL user lacking a permission
#: (NOPERM, which redis-py raises as a ResponseError). Each is a 503, never a 500.
REDIS_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, NoPermissionError,
)

logger = logging.getLogger("hashatlas.api")


class InvalidParam(BaseModel):
    """One rejected request parameter and why."""

    name: str = Field(examples=["step"])
    reason: str = Field(examples=["must be at least the stored step (60 s)"])


class Problem(BaseModel):
    """An RFC 7807 problem document (``application/problem+json``)."""

    type: str = Field(examples=["urn:hashatlas:problem:invalid-parameters"])
    title: str = Field(examples=["Invalid request parameters"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["end: must not be before start"])
    instance: str | None = Field(default=None, examples=["/v1/estimates/history"])
    invalid_params: list[InvalidParam] | None = None


class ProblemError(Exception):
    """Raised by endpoints to answer with a problem document instead of their normal body."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        invalid_params: Sequence[InvalidParam] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.invalid_params = list(invalid_params) if invalid_params is not None else None
        self.headers = dict(headers or {})


def invalid_parameter(name: str, reason: str) -> ProblemError:
    """A 422 naming one parameter, for checks that span several parameters (``end`` < ``start``)."""
    return ProblemError(
        422,
        "invalid-parameters",
        "Invalid request parameters",
        f"{name}: {reason}",
        invalid_params=[InvalidParam(name=name, reason=reason)],
    )


def not_found(detail: str) -> ProblemError:
    return ProblemError(404, "not-found", "Not found", detail)


def service_unavailable(slug: str, detail: str, retry_after_s: int) -> ProblemError:
    """A 503 that tells the client when trying again may help."""
    return ProblemError(
        503,
        slug,
        "Service unavailable",
        detail,
        headers={"Retry-After": str(max(1, retry_after_s))},
    )


def problem_response(request: Request, error: ProblemError) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": request.url.path,
    }
    if error.invalid_params is not None:
        body["invalid_params"] = [param.model_dump() for param in error.invalid_params]
    return Response(
        orjson.dumps(body),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers={"Cache-Control": "no-store", **error.headers},
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the problem bodies an endpoint may answer with."""
    descriptions = {
        404: "Unknown region, or no estimate for it in the current snapshot",
        422: "A parameter is malformed or out of range; `invalid_params` names it",
        503: "Redis is unreachable or no estimate has been published yet (see `Retry-After`)",
    }
    return {
        status: {
            "description": descriptions[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def problem_schemas() -> dict[str, Any]:
    """Component schemas for :class:`Problem`, which the app adds to its OpenAPI document."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    return {"Problem": schema, **definitions}


def _parameter_name(location: Sequence[int | str]) -> str:
    """``("query", "limit")`` → ``limit``; a path inside a parameter keeps its dotted tail."""
    parts = [str(part) for part in location]
    if parts and parts[0] in ("query", "path", "header", "cookie", "body"):
        parts = parts[1:]
    return ".".join(parts) or "request"


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    params = [
        InvalidParam(name=_parameter_name(error.get("loc", ())), reason=str(error.get("msg", "")))
        for error in exc.errors()
    ]
    detail = "; ".join(f"{param.name}: {param.reason}" for param in params)
    error = ProblemError(
        422, "invalid-parameters", "Invalid request parameters", detail, invalid_params=params
    )
    return problem_response(request, error)


async def _problem_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    title = "Not found" if exc.status_code == 404 else "HTTP error"
    error = ProblemError(exc.status_code, slug, title, str(exc.detail), headers=exc.headers)
    return problem_response(request, error)


async def _redis_unavailable(request: Request, exc: Exception) -> Response:
    logger.warning("redis unavailable while serving %s: %s", request.url.path, exc)
    detail = ("the estimate store (Redis) refuses this API's user access (check its ACL)"
              if isinstance(exc, NoPermissionError)
              else "the estimate store (Redis) is unreachable")
    error = service_unavailable("redis-unavailable", detail, REDIS_RETRY_AFTER_S)
    return problem_response(request, error)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The trace goes to the log (the server re-raises after this answer), never to the client.
    error = ProblemError(
        500, "internal-error", "Internal server error", "an unexpected error occurred"
    )
    return problem_response(request, error)


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error path of the app to a problem document."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for redis_error in REDIS_UNAVAILABLE_ERRORS:
        app.add_exception_handler(redis_error, _redis_unavailable)
    app.add_exception_handler(Exception, _unexpected)
