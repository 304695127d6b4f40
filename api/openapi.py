"""The OpenAPI description: generated once from the routes and their models, with problem
documents in place of FastAPI's default 422 body and the history step's real lower bound."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.problems import problem_responses, problem_schemas
from streams.settings import Settings

API_DESCRIPTION = (
    "Real-time estimates of where Bitcoin's hashrate is and how much electricity it draws, "
    "region by region. Read-only; served from the pipeline's latest snapshot. Units: H/s, W, "
    "TWh/yr, Unix seconds; shares are fractions 0..1. Errors are RFC 7807 "
    "`application/problem+json` documents; a bad parameter is named in `invalid_params`."
)
#: Routes whose ``step`` may not be finer than the stored history step (a setting).
HISTORY_PATHS = ("/v1/estimates/history", "/v1/pools/{pool}/history")


def package_version() -> str:
    try:
        return version("hashatlas")
    except PackageNotFoundError:
        return "0.0.0"


def _set_step_minimum(operation: dict[str, Any], stored_step_s: float) -> None:
    for parameter in operation["parameters"]:
        if parameter["name"] == "step":
            number = next(option for option in parameter["schema"]["anyOf"]
                          if option.get("type") == "number")
            number.pop("exclusiveMinimum", None)
            number["minimum"] = stored_step_s


def build_schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version,
                         description=app.description, routes=app.routes)
    problem_422 = problem_responses(422)[422]
    for path_item in schema["paths"].values():
        for operation in path_item.values():
            if "422" in operation["responses"]:
                operation["responses"]["422"] = problem_422
    for path in HISTORY_PATHS:
        _set_step_minimum(schema["paths"][path]["get"], settings.history_step_s)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for default_model in ("HTTPValidationError", "ValidationError"):
        schemas.pop(default_model, None)
    schemas.update(problem_schemas())
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve the schema of :func:`build_schema`, generated on first use and kept."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
