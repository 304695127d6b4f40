"""The hashatlas HTTP API: serves what the pipeline last wrote to Redis, never recomputes it.

Read-only by design (no write endpoints), CORS closed unless ``cors_origins`` lists origins,
every error an RFC 7807 problem. ``GET /v1/estimates/current`` is the endpoint pollers hammer,
so it costs one Redis round trip and passes the stored JSON bytes through untouched; bodies
derived from a snapshot (gzip, the ``stale`` patch) are computed once per snapshot, not per request.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import time
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import orjson
import pycountry
from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import State
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import (
    EstimateStore,
    SettingsDep,
    StoreDep,
    StoredSnapshot,
    latest_alert_states,
    redis_lifespan,
)
from api.metrics import (
    METRICS_CONTENT_TYPE,
    RequestMetrics,
    RequestMetricsMiddleware,
    render_metrics,
)
from api.page import install_page
from api.problems import (
    ProblemError,
    install_problem_handlers,
    invalid_parameter,
    not_found,
    problem_responses,
    problem_schemas,
    service_unavailable,
)
from api.sites import router as sites_router
from api.sse import KEEPALIVE_S, SSE_MEDIA_TYPE, EventStreamResponse, format_event
from streams.commands.sites import load_sites
from streams.contracts import (
    EstimateSnapshot,
    PoolDivergenceAlert,
    RegionalShiftAlert,
    RegionEntry,
)
from streams.rediskeys import NETWORK_SERIES
from streams.settings import Settings, get_settings

CURRENT_PATH = "/v1/estimates/current"
GZIP_MINIMUM_BYTES = 1024
MAX_HISTORY_POINTS = 100_000
DEFAULT_HISTORY_SPAN_S = 86_400.0
REGION_CODE_PATTERN = r"^[A-Za-z]{2}(-[A-Za-z0-9]{1,3})?$"
UNKNOWN_REGION = "ZZ"
CSV_COLUMNS = ("t", "share", "hashrate_hs", "power_w_best")
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
JSON_MEDIA_TYPE = "application/json"

# ---- response models (OpenAPI documentation; bodies are produced without re-validation) -------

EXAMPLE_POWER = {"lower": 1.2e10, "best": 1.9e10, "upper": 3.1e10}
EXAMPLE_TWH = {"lower": 105.2, "best": 166.6, "upper": 271.7}
EXAMPLE_REGION: dict[str, Any] = {
    "region": "US", "name": "United States", "share": 0.378, "share_ci95": [0.348, 0.408],
    "sampling_ci95": [0.3778, 0.3782],
    "share_se_parts": {"sampling": 0.0001, "pool_weights": 0.0, "heterogeneity": 0.0145,
                       "clustering": 0.0038},
    "hashrate_hs": 2.8e20, "hashrate_ci95_hs": [2.7e20, 2.9e20], "sample_hashrate_hs": 1.2e20,
    "power_w": {"lower": 4.5e9, "best": 7.2e9, "upper": 1.2e10},
    "annualized_twh": {"lower": 39.4, "best": 63.1, "upper": 105.2},
    "electricity_usd_kwh": 0.05, "subdivisions": ["US-TX", "US-GA"],
}
EXAMPLE_SNAPSHOT: dict[str, Any] = {
    "type": "estimate", "as_of": 1732400000.0, "published_at": 1732400000.4, "window_s": 300,
    "stale": False,
    "network": {
        "hashrate_hs": 7.5e20, "hashrate_ci95_hs": [7.2e20, 7.8e20], "source": "fused",
        "sources": ["shares", "blocks"], "coverage": 0.41, "sample_hashrate_hs": 3.1e20,
        "power_w": EXAMPLE_POWER, "annualized_twh": EXAMPLE_TWH, "hashprice_usd_ph_day": 52.1,
    },
    "regions": [EXAMPLE_REGION],
}
EXAMPLE_ALERT: dict[str, Any] = {
    "type": "regional_shift", "id": "KZ-1641340800", "region": "KZ", "direction": "down",
    "detected_at": 1641341700.0, "started_at": 1641340800.0, "share_before": 0.18,
    "share_after": 0.06, "magnitude_pp": -12.0, "relative_change": -0.67, "score": 14.2,
    "state": "firing", "updated_at": 1641341700.0,
}


class RegionResponse(RegionEntry):
    """A region's entry plus when the snapshot it comes from was made and whether it is stale."""

    model_config = ConfigDict(json_schema_extra={"example": {
        **EXAMPLE_REGION, "as_of": 1732400000.0, "stale": False}})

    as_of: float
    stale: bool


class HistoryPoint(BaseModel):
    model_config = ConfigDict(extra="allow")

    t: float
    share: float | None = None
    hashrate_hs: float | None = None
    power_w_best: float | None = None


class HistoryResponse(BaseModel):
    """A region's (or, with ``region`` null, the network's) history, oldest point first."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "region": "US", "start": 1732396400.0, "end": 1732400000.0, "step": 60.0,
        "points": [{"t": 1732399940.0, "share": 0.377, "hashrate_hs": 2.79e20,
                    "power_w_best": 7.1e9}]}})

    region: str | None
    start: float
    end: float
    step: float
    points: list[HistoryPoint]


class Block(BaseModel):
    model_config = ConfigDict(extra="allow")

    height: int
    hash: str
    time: float
    pool: str | None = None
    pool_slug: str | None = None
    difficulty: float
    work: int | None = None
    subsidy_sat: int | None = None
    fees_sat: int | None = None


class BlocksResponse(BaseModel):
    """Recent blocks of the best chain, highest first."""

    model_config = ConfigDict(json_schema_extra={"example": {"blocks": [{
        "height": 722010,
        "hash": "0000000000000000000a4f2c2d9ac05a7e1d2b0c8b64d1b0a4f1e2d3c4b5c862",
        "time": 1644129892, "pool": "Foundry USA", "pool_slug": "foundryusa",
        "difficulty": 26690525287405.5, "work": 114633524883045740617728,
        "subsidy_sat": 625000000, "fees_sat": 16035827}]}})

    blocks: list[Block]


class Alert(RegionalShiftAlert):
    model_config = ConfigDict(extra="allow")

    updated_at: float | None = None


class PoolAlert(PoolDivergenceAlert):
    updated_at: float | None = None


class AlertsResponse(BaseModel):
    """Regional-shift alerts, each once in its latest state, newest state change first."""

    model_config = ConfigDict(json_schema_extra={"example": {"alerts": [EXAMPLE_ALERT]}})

    alerts: list[Alert | PoolAlert]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    snapshot_age_s: float = Field(examples=[0.7])


class HistoryFormat(StrEnum):
    json = "json"
    csv = "csv"


# ---- helpers -----------------------------------------------------------------------------------


def quoted_etag(stored_etag: str, *qualifiers: str) -> str:
    """A strong ETag; qualifiers make distinct tags for distinct bodies of one snapshot."""
    return '"' + "-".join([stored_etag.strip('"'), *qualifiers]) + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: weak comparison against each listed tag, or ``*``."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def cache_control(settings: Settings) -> str:
    """Caches may keep an answer for one snapshot interval (whole seconds, at least 1)."""
    return f"public, max-age={max(1, math.floor(settings.snapshot_interval_s))}"


def is_stale(published_at: float, settings: Settings, now: float) -> bool:
    return now - published_at > settings.stale_after_s


def mark_stale(body: bytes) -> bytes:
    document = orjson.loads(body)
    document["stale"] = True
    return orjson.dumps(document)


def accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "")


def prefers_csv(accept: str | None) -> bool:
    """CSV when the client names ``text/csv`` and does not rank ``application/json`` higher."""
    if not accept:
        return False
    quality: dict[str, float] = {}
    for item in accept.split(","):
        media_type, *parameters = (part.strip() for part in item.split(";"))
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media_type.lower()] = q
    csv_q = quality.get("text/csv", 0.0)
    return csv_q > 0 and csv_q >= quality.get("application/json", 0.0)


def is_known_region(code: str) -> bool:
    """Whether ``code`` names a real ISO 3166 country or subdivision (or ``ZZ``, unknown)."""
    if code == UNKNOWN_REGION:
        return True
    if "-" in code:
        return pycountry.subdivisions.get(code=code) is not None
    return pycountry.countries.get(alpha_2=code) is not None


def last_point_per_step(
    rows: list[tuple[bytes, float]], step: float, stored_step: float
) -> list[bytes]:
    """Downsample: the last stored point of each step-long bucket (buckets start at multiples
    of ``step`` since the epoch, so they do not move with ``start``). At the stored step every
    stored point is kept. ``rows`` must be sorted by time."""
    if step <= stored_step * (1 + 1e-9):
        return [member for member, _ in rows]
    kept: list[bytes] = []
    last_bucket: int | None = None
    for member, t in rows:
        bucket = math.floor(t / step)
        if bucket == last_bucket:
            kept[-1] = member
        else:
            kept.append(member)
        last_bucket = bucket
    return kept


def history_csv(points: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for point in points:
        writer.writerow(["" if point.get(column) is None else point[column]
                         for column in CSV_COLUMNS])
    return buffer.getvalue().encode()


def json_array_of_objects(members: list[bytes]) -> list[dict[str, Any]]:
    """Stored members parsed; a member that is not a JSON object is corrupt data (a 500)."""
    parsed = [orjson.loads(member) for member in members]
    for item in parsed:
        if not isinstance(item, dict):
            raise ValueError("a stored member is not a JSON object")
    return parsed


def no_snapshot(settings: Settings) -> ProblemError:
    return service_unavailable(
        "no-estimate", "no estimate published yet", math.ceil(settings.snapshot_interval_s)
    )


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


class SnapshotBodies:
    """Bodies derived from the current snapshot, made once per snapshot (keyed by its etag)."""

    def __init__(self) -> None:
        self._etag: str | None = None
        self._bodies: dict[tuple[bool, bool], bytes] = {}

    def body(self, stored: StoredSnapshot, *, stale: bool, gzipped: bool) -> bytes:
        if not stale and not gzipped:
            return stored.json
        if stored.etag != self._etag:
            self._etag, self._bodies = stored.etag, {}
        key = (stale, gzipped)
        body = self._bodies.get(key)
        if body is None:
            body = mark_stale(stored.json) if stale else stored.json
            if gzipped:
                body = gzip.compress(body, compresslevel=6, mtime=0)
            self._bodies[key] = body
        return body


@dataclass(frozen=True)
class CurrentAnswer:
    """A complete answer for ``GET /v1/estimates/current``, as raw ASGI status/headers/body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def answer_current(state: State, if_none_match: str | None,
                         gzip_accepted: bool) -> CurrentAnswer:
    """The current snapshot (or 304), from one shared Redis read; raises problems on failure."""
    store: EstimateStore = state.store
    settings: Settings = state.settings
    stored = await store.snapshot()
    if stored is None:
        raise no_snapshot(settings)
    stale = is_stale(stored.published_at, settings, time.time())
    etag = quoted_etag(stored.etag, "stale") if stale else quoted_etag(stored.etag)
    headers = [(b"etag", etag.encode()), (b"cache-control", cache_control(settings).encode()),
               (b"vary", b"Accept-Encoding")]
    if etag_matches(if_none_match, etag):
        return CurrentAnswer(304, headers, b"")
    gzipped = gzip_accepted and len(stored.json) >= GZIP_MINIMUM_BYTES
    bodies: SnapshotBodies = state.snapshot_bodies
    body = bodies.body(stored, stale=stale, gzipped=gzipped)
    headers.append((b"content-type", JSON_MEDIA_TYPE.encode()))
    headers.append((b"content-length", str(len(body)).encode()))
    if gzipped:
        headers.append((b"content-encoding", b"gzip"))
    return CurrentAnswer(200, headers, body)


class CurrentEstimateFastPath:
    """Answers ``GET /v1/estimates/current`` in pure ASGI, ahead of routing.

    This is the endpoint pollers hammer; FastAPI's routing, request objects and exception
    middleware would cost it more than its Redis read. Anything but a successful answer (no
    snapshot yet, Redis down) is handed on to the route, so errors stay problem documents made
    in one place. The request metrics still see the route template (``scope["route"]``).
    """

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state
        self.route = next(route for route in router.routes
                          if getattr(route, "path", None) == CURRENT_PATH)

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


# ---- routes ------------------------------------------------------------------------------------

router = APIRouter()
IfNoneMatch = Annotated[
    str | None,
    Header(description="ETag of a copy the client holds; a match answers 304 with no body"),
]
ETAG_HEADERS = {
    "ETag": {"description": "Strong tag of this snapshot's body", "schema": {"type": "string"}},
    "Cache-Control": {"description": "public, max-age=<snapshot interval>",
                      "schema": {"type": "string"}},
}


@router.get(
    CURRENT_PATH,
    tags=["estimates"],
    summary="The current estimate snapshot",
    description=(
        "Network hashrate (with its 95% interval and sources), electrical power and energy "
        "bands, hashprice and every region's share, hashrate and power, as last published. "
        "If the snapshot is older than the staleness limit it is still served, with "
        '`"stale": true`. Send `If-None-Match` with the last `ETag` to poll cheaply (304).'
    ),
    response_model=EstimateSnapshot,
    openapi_extra={"parameters": [{
        "name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
        "description": "ETag of a copy the client holds; a match answers 304 with no body"}]},
    responses={
        200: {"headers": ETAG_HEADERS,
              "content": {JSON_MEDIA_TYPE: {"example": EXAMPLE_SNAPSHOT}}},
        304: {"description": "Not modified: the client's copy is current"},
        **problem_responses(503),
    },
)
async def current_estimate(request: Request) -> Response:
    # Successful GETs are normally answered by CurrentEstimateFastPath before routing; this
    # route documents the endpoint and answers whatever the fast path hands on (problems).
    answer = await answer_current(request.app.state, request.headers.get("if-none-match"),
                                  accepts_gzip(request))
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = answer.headers
    return response


@router.get(
    "/v1/regions/{region}",
    tags=["estimates"],
    summary="One region's current estimate",
    description=(
        "The region's entry from the current snapshot (ISO 3166-1 alpha-2 such as `US`, ISO "
        "3166-2 such as `US-TX`, or `ZZ` for unknown location; case-insensitive). A country "
        "lists its subdivisions in `subdivisions`, each also available here. 404 if the code "
        "is not an ISO code or the snapshot has no estimate for it. Supports `If-None-Match`."
    ),
    response_model=RegionResponse,
    responses={
        200: {"headers": ETAG_HEADERS},
        304: {"description": "Not modified: the client's copy is current"},
        **problem_responses(404, 422, 503),
    },
)
async def region_estimate(
    store: StoreDep,
    settings: SettingsDep,
    region: Annotated[str, Path(pattern=REGION_CODE_PATTERN, examples=["US", "US-TX"],
                                description="ISO 3166-1 alpha-2 or ISO 3166-2 code")],
    if_none_match: IfNoneMatch = None,
) -> Response:
    code = region.upper()
    head, entry = await store.head_and_region(code)
    if head is None:
        raise no_snapshot(settings)
    if entry is None:
        if is_known_region(code):
            raise not_found(f"no estimate for region {code} in the current snapshot")
        raise not_found(f"unknown region {code}: not an ISO 3166 country or subdivision code")
    stale = is_stale(head.published_at, settings, time.time())
    qualifiers = (code, "stale") if stale else (code,)
    etag = quoted_etag(head.etag, *qualifiers)
    headers = {"ETag": etag, "Cache-Control": cache_control(settings)}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    document = orjson.loads(entry)
    document["as_of"] = head.as_of
    document["stale"] = stale
    return Response(orjson.dumps(document), media_type=JSON_MEDIA_TYPE, headers=headers)


def history_span(start: float | None, end: float | None, step: float | None,
                 stored_step: float) -> tuple[float, float, float]:
    """A history request's start, end and step with their defaults (the last 24 h, the stored
    step); 422 problems naming the parameter for an empty span, a step finer than what is
    stored, or more than MAX_HISTORY_POINTS points."""
    now = time.time()
    if end is None:
        end = now if start is None else max(now, start)
    if start is None:
        start = max(0.0, end - DEFAULT_HISTORY_SPAN_S)
    if end < start:
        raise invalid_parameter("end", f"must not be before start ({start})")
    step = stored_step if step is None else step
    if step < stored_step * (1 - 1e-9):
        raise invalid_parameter("step", f"must be at least the stored step ({stored_step} s)")
    if (end - start) / step > MAX_HISTORY_POINTS:
        raise invalid_parameter(
            "step",
            f"span / step gives more than {MAX_HISTORY_POINTS} points: "
            "use a larger step or a shorter span",
        )
    return start, end, step


@router.get(
    "/v1/estimates/history",
    tags=["estimates"],
    summary="A region's (or the network's) estimate history",
    description=(
        "Points `{t, share, hashrate_hs, power_w_best}` with `start <= t <= end`, oldest first. "
        "`region` omitted gives the network (share 1). Default span: the last 24 h. `step` "
        "must be at least the stored step; a larger step keeps the **last stored point of each "
        "step-long bucket** (buckets aligned to multiples of `step` since the epoch), with its "
        f"own `t`. At most {MAX_HISTORY_POINTS:,} buckets per request. `format=csv` or "
        "`Accept: text/csv` gives CSV with header `t,share,hashrate_hs,power_w_best`."
    ),
    response_model=HistoryResponse,
    responses={
        200: {"content": {"text/csv": {
            "schema": {"type": "string"},
            "example": "t,share,hashrate_hs,power_w_best\r\n1732399940.0,0.377,2.79e+20,7.1e9\r\n",
        }}},
        **problem_responses(404, 422, 503),
    },
)
async def estimate_history(
    store: StoreDep,
    settings: SettingsDep,
    region: Annotated[str | None, Query(pattern=REGION_CODE_PATTERN, examples=["US"],
                                        description="region code; omit for the network")] = None,
    start: Annotated[float | None, Query(ge=0, allow_inf_nan=False,
                                         description="Unix seconds (default: end − 24 h)")] = None,
    end: Annotated[float | None, Query(ge=0, allow_inf_nan=False,
                                       description="Unix seconds (default: now)")] = None,
    step: Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                        description="seconds (default: the stored step)")] = None,
    output_format: Annotated[HistoryFormat | None, Query(alias="format")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    stored_step = settings.history_step_s
    start, end, step = history_span(start, end, step, stored_step)
    code = region.upper() if region is not None else None
    rows = await store.history(code or NETWORK_SERIES, start, end)
    if not rows and code is not None and not is_known_region(code):
        raise not_found(f"unknown region {code}: not an ISO 3166 country or subdivision code")
    points = json_array_of_objects(last_point_per_step(rows, step, stored_step))
    headers = {"Vary": "Accept"}
    if output_format is HistoryFormat.csv or (output_format is None and prefers_csv(accept)):
        name = code or NETWORK_SERIES
        headers["Content-Disposition"] = f'inline; filename="hashatlas-history-{name}.csv"'
        return Response(history_csv(points), media_type=CSV_MEDIA_TYPE, headers=headers)
    body = {"region": code, "start": start, "end": end, "step": step, "points": points}
    return Response(orjson.dumps(body), media_type=JSON_MEDIA_TYPE, headers=headers)


@router.get(
    "/v1/network/blocks",
    tags=["network"],
    summary="Recent blocks",
    description="The most recent blocks of the best chain (highest first), with height, hash, "
    "time, pool, difficulty, work, subsidy and fees (satoshi).",
    response_model=BlocksResponse,
    responses=problem_responses(422, 503),
)
async def recent_blocks(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="how many blocks (1 to 1000)")] = 20,
) -> Response:
    members = await store.blocks(limit)
    json_array_of_objects(members)  # reject corrupt data rather than emit invalid JSON
    # Stored bytes pass through: block work exceeds 64 bits, which a parse/dump could round.
    return Response(b'{"blocks":[' + b",".join(members) + b"]}", media_type=JSON_MEDIA_TYPE)


@router.get(
    "/v1/alerts",
    tags=["alerts"],
    summary="Regional-shift alerts, newest first",
    description=(
        "Each alert once, in its latest state (`firing` or `resolved`), ordered by the time of "
        "that state change, newest first. `since` keeps alerts whose latest state change is at "
        "or after it (poll with the time of your last poll); `region` keeps that region's "
        "alerts (a country code also matches its subdivisions)."
    ),
    response_model=AlertsResponse,
    responses=problem_responses(422, 503),
)
async def alerts(
    store: StoreDep,
    since: Annotated[float | None, Query(ge=0, allow_inf_nan=False,
                                         description="Unix seconds")] = None,
    region: Annotated[str | None, Query(pattern=REGION_CODE_PATTERN, examples=["KZ"])] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many (1 to 1000)")] = 100,
) -> Response:
    found = latest_alert_states(await store.alert_records(since))
    if region is not None:
        code = region.upper()
        found = [alert for alert in found
                 if alert.get("region") == code or str(alert.get("region")).startswith(code + "-")]
    return Response(orjson.dumps({"alerts": found[:limit]}), media_type=JSON_MEDIA_TYPE)


@router.get(
    "/v1/stream",
    tags=["stream"],
    summary="Live estimates and alerts (Server-Sent Events)",
    description=(
        "`event: estimate` (data: the snapshot, as `/v1/estimates/current`) and `event: alert` "
        "(data: an alert) as the pipeline publishes them, each with an `id:` line. The stream "
        "opens with the current snapshot, if any. A comment line is sent after "
        f"{KEEPALIVE_S:g} s without events."
    ),
    response_class=EventStreamResponse,
    status_code=200,
    responses={
        200: {"content": {SSE_MEDIA_TYPE: {
            "schema": {"type": "string"},
            "example": 'id: estimate-1732400000.0\nevent: estimate\ndata: {"as_of": ...}\n\n'}}},
        **problem_responses(503),
    },
)
async def stream(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    pubsub = store.streams_redis.pubsub()
    try:
        await pubsub.subscribe(store.keys.events_channel)
        stored = await store.snapshot()  # after subscribing: no event can fall in between
        first_frame = b""
        if stored is not None:
            body = orjson.loads(stored.json)
            if is_stale(stored.published_at, settings, time.time()):
                body["stale"] = True
            first_frame = format_event("estimate", body)
    except BaseException:
        await pubsub.aclose()
        raise
    metrics: RequestMetrics = request.app.state.request_metrics
    return EventStreamResponse(pubsub, first_frame, keepalive_s=request.app.state.sse_keepalive_s,
                               clients=metrics.sse_clients)


@router.get(
    "/metrics",
    tags=["operations"],
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


@router.get("/healthz", tags=["operations"], summary="Liveness: the process is up",
            description="Does not touch Redis.", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    tags=["operations"],
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


# ---- app ---------------------------------------------------------------------------------------

API_DESCRIPTION = (
    "Real-time estimates of where Bitcoin's hashrate is and how much electricity it draws, "
    "region by region. Read-only; served from the pipeline's latest snapshot. Units: H/s, W, "
    "TWh/yr, Unix seconds; shares are fractions 0..1. Errors are RFC 7807 "
    "`application/problem+json` documents; a bad parameter is named in `invalid_params`."
)


def _package_version() -> str:
    try:
        return version("hashatlas")
    except PackageNotFoundError:
        return "0.0.0"


def _install_openapi(app: FastAPI, settings: Settings) -> None:
    """Generate the schema once, with problem documents in place of FastAPI's default 422 body
    and the history step's real lower bound (the stored step, a setting)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            problem_422 = problem_responses(422)[422]
            for path_item in schema["paths"].values():
                for operation in path_item.values():
                    if "422" in operation["responses"]:
                        operation["responses"]["422"] = problem_422
            history = schema["paths"]["/v1/estimates/history"]["get"]
            for parameter in history["parameters"]:
                if parameter["name"] == "step":
                    number = next(option for option in parameter["schema"]["anyOf"]
                                  if option.get("type") == "number")
                    number.pop("exclusiveMinimum", None)
                    number["minimum"] = settings.history_step_s
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for default_model in ("HTTPValidationError", "ValidationError"):
                schemas.pop(default_model, None)
            schemas.update(problem_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    settings: Settings | None = None, *, sse_keepalive_s: float = KEEPALIVE_S
) -> FastAPI:
    """A fresh app bound to ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(title="hashatlas", version=_package_version(), description=API_DESCRIPTION,
                  lifespan=redis_lifespan)
    request_metrics = RequestMetrics()
    app.state.settings = settings
    app.state.request_metrics = request_metrics
    app.state.snapshot_bodies = SnapshotBodies()
    app.state.sse_keepalive_s = sse_keepalive_s
    app.state.sites = load_sites(settings, warn=logging.getLogger("hashatlas.api").warning)
    install_problem_handlers(app)
    app.include_router(router)
    app.include_router(sites_router)
    from api.pools import router as pools_router  # imports this module's helpers

    app.include_router(pools_router)
    install_page(app)
    # add_middleware wraps: the last added is the outermost. Outside in: request metrics,
    # CORS (only if origins are configured), the current-estimate fast path, GZip.
    app.add_middleware(GZipExceptPrecompressed, exempt_paths=frozenset({CURRENT_PATH}))
    app.add_middleware(CurrentEstimateFastPath, state=app.state)
    cors_origins = settings.cors_origins
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET"],
                           allow_headers=["Accept", "If-None-Match"],
                           expose_headers=["ETag", "Retry-After"])
    app.add_middleware(RequestMetricsMiddleware, metrics=request_metrics)
    _install_openapi(app, settings)
    return app


app = create_app()
