"""The HTTP API against a real Redis holding what the pipeline writes (never a mock).

Fixtures write Redis exactly as the snapshot publisher does (tests/integration/api_helpers.py)
and the tests compare answers with those written values: the API must serve them, never
recompute them. The ``store`` and ``api`` fixtures are in tests/integration/conftest.py.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import hypothesis
import orjson
import pytest
import redis
import schemathesis
import uvicorn
from fastapi import FastAPI
from pydantic import Field
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from starlette.requests import Request

from api.command import add_parser
from api.deps import EstimateStore
from api.main import create_app
from api.routes.estimates import current_estimate
from streams.rediskeys import NETWORK_SERIES
from streams.settings import Settings
from tests.conftest import PROJECT_ROOT, free_port
from tests.integration.api_helpers import (
    AS_OF,
    KEYS,
    PREFIX,
    assert_names_parameter,
    assert_problem,
    make_settings,
    make_snapshot,
    open_client,
    publish_snapshot,
)

HISTORY_START = 1_732_392_000.0  # a multiple of 300 s


# ---- what the pipeline writes -------------------------------------------------------------------


def history_point(t: float, share: float) -> dict[str, float]:
    return {"t": t, "share": share, "hashrate_hs": 7.5e20 * share,
            "power_w_best": 1.9e10 * share}


def write_history(client: redis.Redis, series: str, points: list[dict[str, float]]) -> None:
    client.zadd(KEYS.history(series), {orjson.dumps(p): p["t"] for p in points})


def block(height: int) -> dict[str, Any]:
    return {"height": height, "hash": f"{height:064x}", "time": 1_644_000_000 + 600 * height,
            "pool": "Foundry USA", "pool_slug": "foundryusa", "difficulty": 2.6e13,
            "work": 114_633_524_883_045_740_617_728 + height, "subsidy_sat": 625_000_000,
            "fees_sat": 1000 + height}


def alert(alert_id: str, region: str, state: str, changed_at: float) -> dict[str, Any]:
    return {"type": "regional_shift", "id": alert_id, "region": region, "direction": "down",
            "detected_at": 1_641_341_700.0, "started_at": 1_641_340_800.0, "share_before": 0.18,
            "share_after": 0.06, "magnitude_pp": -12.0, "relative_change": -0.67, "score": 14.2,
            "state": state, "updated_at": changed_at}


def write_alert(client: redis.Redis, record: dict[str, Any]) -> None:
    client.zadd(KEYS.alerts, {orjson.dumps(record): record["updated_at"]})


# ---- fixtures (store and api: tests/integration/conftest.py) -----------------------------------


@pytest.fixture()
async def api_redis_down() -> AsyncIterator[httpx.AsyncClient]:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async for client in open_client(create_app(make_settings(closed))):
        yield client



# ---- /v1/estimates/current ---------------------------------------------------------------------


async def test_current_passes_stored_snapshot_through(api: httpx.AsyncClient,
                                                      store: redis.Redis) -> None:
    stored = publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    response = await api.get("/v1/estimates/current", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.content == stored
    assert response.headers["etag"] == '"etag-1"'
    assert response.headers["cache-control"] == "public, max-age=1"
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["stale"] is False
    assert document["network"]["hashrate_hs"] == 7.5e20


async def test_current_gzip_is_the_same_document(api: httpx.AsyncClient,
                                                 store: redis.Redis) -> None:
    stored = publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    async with api.stream("GET", "/v1/estimates/current",
                          headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in response.headers["vary"]
    assert gzip.decompress(raw) == stored


async def test_current_etag_and_not_modified(api: httpx.AsyncClient, store: redis.Redis) -> None:
    publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    first = await api.get("/v1/estimates/current")
    etag = first.headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await api.get("/v1/estimates/current", headers={"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["etag"] == etag
    publish_snapshot(store, make_snapshot(time.time(), as_of=AS_OF + 1), "etag-2")
    changed = await api.get("/v1/estimates/current", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] == '"etag-2"'
    assert changed.json()["as_of"] == AS_OF + 1


async def test_current_marks_an_old_snapshot_stale(api: httpx.AsyncClient,
                                                   store: redis.Redis) -> None:
    snapshot = make_snapshot(time.time() - 31.0)
    publish_snapshot(store, snapshot, "etag-old")
    response = await api.get("/v1/estimates/current")
    assert response.status_code == 200
    document = response.json()
    assert document["stale"] is True
    expected = orjson.loads(snapshot.model_dump_json())
    expected["stale"] = True
    assert document == expected
    assert response.headers["etag"] != '"etag-old"'  # a different body needs a different tag
    again = await api.get("/v1/estimates/current",
                          headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


async def test_current_without_snapshot_is_503(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/estimates/current")
    problem = assert_problem(response, 503)
    assert problem["detail"] == "no estimate published yet"
    assert int(response.headers["retry-after"]) >= 1


async def test_cache_max_age_follows_snapshot_interval(redis_url: str,
                                                       store: redis.Redis) -> None:
    publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    async for client in open_client(create_app(make_settings(redis_url,
                                                             snapshot_interval_s=2.7))):
        response = await client.get("/v1/estimates/current")
        assert response.headers["cache-control"] == "public, max-age=2"
    async for client in open_client(create_app(make_settings(redis_url,
                                                             snapshot_interval_s=0.25))):
        response = await client.get("/v1/regions/US")
        assert response.headers["cache-control"] == "public, max-age=1"


async def test_concurrent_requests_share_one_redis_read(api: httpx.AsyncClient,
                                                        store: redis.Redis) -> None:
    stored = publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    before = store.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
    responses = await asyncio.gather(*(api.get("/v1/estimates/current") for _ in range(20)))
    reads = store.info("commandstats")["cmdstat_hmget"]["calls"] - before
    assert all(r.status_code == 200 and r.content == stored for r in responses)
    assert 1 <= reads < 20


async def test_shared_read_survives_its_leader_being_cancelled(redis_url: str,
                                                               store: redis.Redis) -> None:
    publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    app = create_app(make_settings(redis_url))
    async with app.router.lifespan_context(app):
        snapshot_store: EstimateStore = app.state.store
        leader = asyncio.ensure_future(snapshot_store.snapshot())
        await asyncio.sleep(0)  # the leader's read is in flight
        followers = [asyncio.ensure_future(snapshot_store.snapshot()) for _ in range(3)]
        await asyncio.sleep(0)
        leader.cancel()
        results = await asyncio.gather(*followers)
        assert all(result is not None and result.etag == "etag-1" for result in results)
        with pytest.raises(asyncio.CancelledError):
            await leader


async def test_route_answers_what_the_fast_path_hands_on(redis_url: str,
                                                         store: redis.Redis) -> None:
    """The route behind the fast path gives the same answer (it runs on errors and races)."""
    stored = publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    app = create_app(make_settings(redis_url))
    async with app.router.lifespan_context(app):
        scope = {"type": "http", "method": "GET", "path": "/v1/estimates/current", "app": app,
                 "headers": [(b"accept-encoding", b"gzip")], "query_string": b""}
        response = await current_estimate(Request(scope))
        assert response.status_code == 200
        assert gzip.decompress(response.body) == stored
        assert response.headers["etag"] == '"etag-1"'
        assert response.headers["content-encoding"] == "gzip"
        scope["headers"] = [(b"if-none-match", b'"etag-1"')]
        assert (await current_estimate(Request(scope))).status_code == 304


# ---- /v1/regions/{region} ----------------------------------------------------------------------


async def test_region_entry_and_subdivisions(api: httpx.AsyncClient, store: redis.Redis) -> None:
    snapshot = make_snapshot(time.time())
    publish_snapshot(store, snapshot, "etag-1")
    response = await api.get("/v1/regions/US")
    assert response.status_code == 200
    document = response.json()
    written = orjson.loads(snapshot.regions[0].model_dump_json())
    assert {k: v for k, v in document.items() if k not in ("as_of", "stale")} == written
    assert document["subdivisions"] == ["US-TX", "US-GA"]
    assert document["as_of"] == AS_OF
    assert document["stale"] is False
    texas = await api.get("/v1/regions/us-tx")  # codes are case-insensitive
    assert texas.status_code == 200
    assert texas.json()["share"] == 0.15
    assert texas.json()["name"] == "Texas"


async def test_region_etag_and_not_modified(api: httpx.AsyncClient, store: redis.Redis) -> None:
    publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    us = await api.get("/v1/regions/US")
    kz = await api.get("/v1/regions/KZ")
    assert us.headers["etag"] != kz.headers["etag"]
    assert "etag-1" in us.headers["etag"]
    cached = await api.get("/v1/regions/US", headers={"If-None-Match": us.headers["etag"]})
    assert cached.status_code == 304
    assert cached.content == b""
    other = await api.get("/v1/regions/US", headers={"If-None-Match": kz.headers["etag"]})
    assert other.status_code == 200
    publish_snapshot(store, make_snapshot(time.time()), "etag-2")
    after = await api.get("/v1/regions/US", headers={"If-None-Match": us.headers["etag"]})
    assert after.status_code == 200


async def test_region_errors(api: httpx.AsyncClient, store: redis.Redis) -> None:
    assert_problem(await api.get("/v1/regions/US"), 503)  # nothing published yet
    publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    unknown = assert_problem(await api.get("/v1/regions/XX"), 404)
    assert "unknown region XX" in unknown["detail"]
    absent = assert_problem(await api.get("/v1/regions/FR"), 404)
    assert "no estimate for region FR" in absent["detail"]
    assert_problem(await api.get("/v1/regions/US-CA"), 404)
    for malformed in ("USA", "U", "US_TX", "US-TOOLONG", "1A"):
        assert_names_parameter(await api.get(f"/v1/regions/{malformed}"), "region")


async def test_region_marked_stale(api: httpx.AsyncClient, store: redis.Redis) -> None:
    publish_snapshot(store, make_snapshot(time.time() - 120.0), "etag-1")
    response = await api.get("/v1/regions/KZ")
    assert response.json()["stale"] is True


# ---- /v1/estimates/history ---------------------------------------------------------------------


def network_points(count: int) -> list[dict[str, float]]:
    return [history_point(HISTORY_START + 60.0 * i, 1.0) for i in range(count)]


def us_points(count: int) -> list[dict[str, float]]:
    return [history_point(HISTORY_START + 60.0 * i, 0.30 + 0.001 * i) for i in range(count)]


async def test_history_network_and_region(api: httpx.AsyncClient, store: redis.Redis) -> None:
    write_history(store, NETWORK_SERIES, network_points(120))
    write_history(store, "US", us_points(120))
    end = HISTORY_START + 60.0 * 119
    response = await api.get("/v1/estimates/history",
                             params={"start": HISTORY_START, "end": end})
    assert response.status_code == 200
    document = response.json()
    assert document["region"] is None
    assert document["points"] == network_points(120)
    window = await api.get("/v1/estimates/history", params={
        "region": "US", "start": HISTORY_START + 600, "end": HISTORY_START + 1200})
    assert window.json()["region"] == "US"
    assert window.json()["points"] == us_points(21)[10:]


async def test_history_defaults_to_the_last_day(api: httpx.AsyncClient,
                                                store: redis.Redis) -> None:
    now = time.time()
    recent = [history_point(now - 3600.0, 1.0), history_point(now - 60.0, 1.0)]
    old = [history_point(now - 2 * 86400.0, 1.0)]
    write_history(store, NETWORK_SERIES, recent + old)
    response = await api.get("/v1/estimates/history")
    assert response.json()["points"] == recent


async def test_history_downsamples_to_last_point_per_step(api: httpx.AsyncClient,
                                                          store: redis.Redis) -> None:
    write_history(store, "US", us_points(20))  # t = start + 0, 60, ..., 1140
    response = await api.get("/v1/estimates/history", params={
        "region": "US", "start": HISTORY_START, "end": HISTORY_START + 1140, "step": 300})
    points = response.json()["points"]
    # Buckets [start, start+300) ... : the last stored point of each is at +240, +540, +840, +1140.
    assert [p["t"] - HISTORY_START for p in points] == [240.0, 540.0, 840.0, 1140.0]
    assert [p["share"] for p in points] == [0.304, 0.309, 0.314, 0.319]


async def test_history_csv_both_ways(api: httpx.AsyncClient, store: redis.Redis) -> None:
    write_history(store, "US", us_points(3))
    params: dict[str, str | float] = {"region": "US", "start": HISTORY_START,
                                      "end": HISTORY_START + 120}
    by_format = await api.get("/v1/estimates/history", params={**params, "format": "csv"})
    by_accept = await api.get("/v1/estimates/history", params=params,
                              headers={"Accept": "text/csv"})
    for response in (by_format, by_accept):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(response.text)))
        assert rows[0] == ["t", "share", "hashrate_hs", "power_w_best"]
        expected = us_points(3)
        assert [[float(value) for value in row] for row in rows[1:]] == [
            [p["t"], p["share"], p["hashrate_hs"], p["power_w_best"]] for p in expected]
    as_json = await api.get("/v1/estimates/history", params=params,
                            headers={"Accept": "text/csv;q=0.5, application/json"})
    assert as_json.headers["content-type"] == "application/json"


async def test_history_large_response_is_gzipped(api: httpx.AsyncClient,
                                                 store: redis.Redis) -> None:
    write_history(store, NETWORK_SERIES, network_points(1440))
    params = {"start": HISTORY_START, "end": HISTORY_START + 86400}
    async with api.stream("GET", "/v1/estimates/history", params=params,
                          headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert len(orjson.loads(gzip.decompress(raw))["points"]) == 1440
    assert len(raw) < len(gzip.decompress(raw)) / 3


async def test_history_parameter_errors(api: httpx.AsyncClient) -> None:
    url = "/v1/estimates/history"
    cases: list[tuple[dict[str, str | float], str]] = [
        ({"start": 2000, "end": 1000}, "end"),
        ({"step": 30}, "step"),
        ({"start": 0, "end": 7_000_000, "step": 60}, "step"),
        ({"step": 0}, "step"),
        ({"start": "yesterday"}, "start"),
        ({"start": "nan"}, "start"),
        ({"end": "inf"}, "end"),
        ({"start": -5}, "start"),
        ({"format": "xml"}, "format"),
        ({"region": "united-states"}, "region"),
    ]
    for params, name in cases:
        assert_names_parameter(await api.get(url, params=params), name)
    assert_problem(await api.get(url, params={"region": "XX"}), 404)
    empty = await api.get(url, params={"region": "FR"})  # a real code without data: no points
    assert empty.status_code == 200
    assert empty.json()["points"] == []


# ---- /v1/network/blocks ------------------------------------------------------------------------


async def test_blocks_newest_first_with_exact_work(api: httpx.AsyncClient,
                                                   store: redis.Redis) -> None:
    # Block work exceeds 64 bits, which orjson refuses: the writer uses the standard library.
    store.zadd(KEYS.blocks, {json.dumps(block(h)): h for h in range(800_000, 800_030)})
    default = (await api.get("/v1/network/blocks")).json()["blocks"]
    assert [b["height"] for b in default] == list(range(800_029, 800_009, -1))
    assert default[0] == block(800_029)  # work > 2**64 survives exactly
    five = (await api.get("/v1/network/blocks", params={"limit": 5})).json()["blocks"]
    assert [b["height"] for b in five] == list(range(800_029, 800_024, -1))
    for limit in (0, 1001, "many"):
        assert_names_parameter(await api.get("/v1/network/blocks", params={"limit": limit}),
                               "limit")


async def test_corrupt_stored_data_is_a_500_problem_without_trace(api: httpx.AsyncClient,
                                                                  store: redis.Redis) -> None:
    store.zadd(KEYS.blocks, {b"{not json": 1})
    problem = assert_problem(await api.get("/v1/network/blocks"), 500)
    assert "Traceback" not in problem["detail"]
    assert problem["detail"] == "an unexpected error occurred"


# ---- /v1/alerts --------------------------------------------------------------------------------


async def test_alerts_latest_state_newest_first(api: httpx.AsyncClient,
                                                store: redis.Redis) -> None:
    write_alert(store, alert("kz-1", "KZ", "firing", 1000.0))
    write_alert(store, alert("kz-1", "KZ", "resolved", 5000.0))
    write_alert(store, alert("tx-1", "US-TX", "firing", 3000.0))
    write_alert(store, alert("cn-1", "CN", "firing", 4000.0))
    found = (await api.get("/v1/alerts")).json()["alerts"]
    assert [(a["id"], a["state"]) for a in found] == [
        ("kz-1", "resolved"), ("cn-1", "firing"), ("tx-1", "firing")]
    since = (await api.get("/v1/alerts", params={"since": 3500})).json()["alerts"]
    assert [a["id"] for a in since] == ["kz-1", "cn-1"]
    us = (await api.get("/v1/alerts", params={"region": "us"})).json()["alerts"]
    assert [a["id"] for a in us] == ["tx-1"]
    one = (await api.get("/v1/alerts", params={"limit": 1})).json()["alerts"]
    assert [a["id"] for a in one] == ["kz-1"]
    assert found[1] == alert("cn-1", "CN", "firing", 4000.0)


async def test_alerts_parameter_errors(api: httpx.AsyncClient) -> None:
    cases: list[tuple[dict[str, str | int], str]] = [
        ({"since": "soon"}, "since"), ({"region": "K"}, "region"), ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit")]
    for params, name in cases:
        assert_names_parameter(await api.get("/v1/alerts", params=params), name)


# ---- operations ----------------------------------------------------------------------------------


async def test_healthz_and_readyz(api: httpx.AsyncClient, store: redis.Redis) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    missing = assert_problem(await api.get("/readyz"), 503)
    assert "no estimate" in missing["detail"]
    publish_snapshot(store, make_snapshot(time.time() - 45.0), "etag-old")
    stale = assert_problem(await api.get("/readyz"), 503)
    assert "old" in stale["detail"] and "limit 30" in stale["detail"]
    publish_snapshot(store, make_snapshot(time.time()), "etag-new")
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert 0.0 <= ready.json()["snapshot_age_s"] < 5.0


async def test_redis_down_is_503_with_retry_after(api_redis_down: httpx.AsyncClient) -> None:
    for path in ("/v1/estimates/current", "/v1/regions/US", "/v1/estimates/history",
                 "/v1/network/blocks", "/v1/alerts", "/readyz", "/v1/stream"):
        response = await api_redis_down.get(path)
        problem = assert_problem(response, 503)
        assert "Redis" in problem["detail"], path
        assert int(response.headers["retry-after"]) > 0
    assert (await api_redis_down.get("/healthz")).status_code == 200
    scrape = await api_redis_down.get("/metrics")
    assert scrape.status_code == 200
    assert "hashatlas_api_redis_up 0.0" in scrape.text


async def test_unknown_route_and_method_are_problems(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get("/v1/nothing"), 404)
    assert_problem(await api.post("/v1/estimates/current"), 405)


class SettingsWithCors(Settings):
    """Settings as they would be with a ``cors_origins`` field (the API reads it if present)."""

    cors_origins: list[str] = Field(default_factory=lambda: ["https://dashboard.example"])


async def test_cors_closed_unless_origins_configured(api: httpx.AsyncClient, redis_url: str,
                                                     store: redis.Redis) -> None:
    publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    origin = {"Origin": "https://dashboard.example"}
    for path in ("/healthz", "/v1/estimates/current"):
        closed = await api.get(path, headers=origin)
        assert "access-control-allow-origin" not in closed.headers
    settings = SettingsWithCors(redis_url=redis_url, redis_prefix=PREFIX)
    async for client in open_client(create_app(settings)):
        for path in ("/healthz", "/v1/estimates/current", "/v1/regions/US"):
            opened = await client.get(path, headers=origin)
            assert opened.headers["access-control-allow-origin"] == "https://dashboard.example"
            assert "ETag" in opened.headers["access-control-expose-headers"]
        other = await client.get("/healthz", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def metric_value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split(" ")[1])
    raise AssertionError(f"{sample} not in metrics")


async def test_metrics_exports_snapshot_gauges(api: httpx.AsyncClient, store: redis.Redis) -> None:
    publish_snapshot(store, make_snapshot(time.time() - 2.0), "etag-1")
    write_alert(store, alert("kz-1", "KZ", "firing", 1000.0))
    write_alert(store, alert("cn-1", "CN", "firing", 1000.0))
    write_alert(store, alert("cn-1", "CN", "resolved", 2000.0))
    await api.get("/v1/regions/US")
    await api.get("/v1/regions/KZ")
    await api.get("/v1/regions/XX")
    await api.get("/v1/estimates/current")
    text = (await api.get("/metrics")).text
    assert metric_value(text, "hashatlas_network_hashrate_hashes_per_second") == 7.5e20
    assert metric_value(text, "hashatlas_network_hashrate_lower_hashes_per_second") == 7.2e20
    assert metric_value(text, "hashatlas_network_hashrate_upper_hashes_per_second") == 7.8e20
    assert metric_value(text, 'hashatlas_network_power_watts{band="best"}') == 1.9e10
    assert metric_value(text, 'hashatlas_network_power_watts{band="upper"}') == 3.1e10
    assert metric_value(text, "hashatlas_coverage_ratio") == 0.41
    assert metric_value(text, "hashatlas_hashprice_usd_per_petahash_day") == 52.1
    assert metric_value(text, 'hashatlas_region_share_ratio{region="US"}') == 0.378
    assert metric_value(text, 'hashatlas_region_share_lower_ratio{region="KZ"}') == 0.13 * 0.97
    assert metric_value(text, 'hashatlas_region_hashrate_hashes_per_second{region="CN"}') == (
        7.5e20 * 0.21)
    assert metric_value(text, 'hashatlas_region_power_watts{band="lower",region="KZ"}') == (
        1.9e10 * 0.13 * 0.6)
    assert 2.0 <= metric_value(text, "hashatlas_snapshot_age_seconds") < 10.0
    assert metric_value(text, "hashatlas_snapshot_stale") == 0.0
    assert metric_value(text, 'hashatlas_alerts_firing{region="KZ"}') == 1.0
    assert metric_value(text, 'hashatlas_alerts_firing{region="CN"}') == 0.0
    assert metric_value(text, "hashatlas_api_redis_up") == 1.0
    # Route templates, not raw paths, label the request metrics.
    sample = ('hashatlas_api_requests_total{method="GET",route="/v1/regions/{region}",'
              'status="200"}')
    assert metric_value(text, sample) == 2.0
    assert 'route="/v1/regions/US"' not in text
    assert metric_value(text, sample.replace('"200"', '"404"')) == 1.0
    current = ('hashatlas_api_requests_total{method="GET",route="/v1/estimates/current",'
               'status="200"}')
    assert metric_value(text, current) == 1.0
    assert "hashatlas_api_request_duration_seconds_bucket" in text


# ---- /v1/stream (a real server: ASGITransport cannot stream an endless response) ---------------


class ServerThread:
    """Uvicorn serving ``app`` on a free loopback port in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def read_frame(lines: Iterator[str]) -> list[str]:
    """The lines of the next SSE frame (up to the blank line)."""
    frame: list[str] = []
    for line in lines:
        if line == "":
            if frame:
                return frame
            continue
        frame.append(line)
    raise AssertionError("stream ended")


def next_event(lines: Iterator[str]) -> list[str]:
    """The next frame that is not a keep-alive comment."""
    while (frame := read_frame(lines)) == [": keep-alive"]:
        pass
    return frame


def test_stream_relays_events_and_unsubscribes(redis_url: str, store: redis.Redis) -> None:
    stored = publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    app = create_app(make_settings(redis_url), sse_keepalive_s=0.3)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("GET", "/v1/stream") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            assert read_frame(lines) == ["retry: 5000", ": connected"]
            opening = read_frame(lines)
            assert opening[:2] == [f"id: estimate-{AS_OF}", "event: estimate"]
            assert orjson.loads(opening[2].removeprefix("data: ")) == orjson.loads(stored)
            assert store.pubsub_numsub(KEYS.events_channel)[0][1] == 1
            assert read_frame(lines) == [": keep-alive"]
            record = alert("kz-1", "KZ", "firing", 1000.0)
            store.publish(KEYS.events_channel, orjson.dumps({"event": "alert", "data": record}))
            store.publish(KEYS.events_channel, b"not json")  # ignored, the stream goes on
            newer = orjson.loads(make_snapshot(time.time(), as_of=AS_OF + 1).model_dump_json())
            store.publish(KEYS.events_channel, orjson.dumps({"event": "estimate", "data": newer}))
            assert next_event(lines) == ["id: alert-kz-1-firing", "event: alert",
                                         "data: " + orjson.dumps(record).decode()]
            estimate = next_event(lines)
            assert estimate[:2] == [f"id: estimate-{AS_OF + 1}", "event: estimate"]
            assert orjson.loads(estimate[2].removeprefix("data: ")) == newer
        deadline = time.monotonic() + 5
        while store.pubsub_numsub(KEYS.events_channel)[0][1] != 0:
            assert time.monotonic() < deadline, "subscription left behind after disconnect"
            time.sleep(0.05)
        scrape = client.get("/metrics").text
        assert metric_value(scrape, "hashatlas_api_sse_clients") == 0.0


def test_api_command_serves_on_the_configured_port(redis_url: str, store: redis.Redis) -> None:
    parser = argparse.ArgumentParser(prog="hashatlas")
    add_parser(parser.add_subparsers(dest="command", required=True))
    given = parser.parse_args(["api", "--host", "0.0.0.0", "--port", "9001"])
    assert (given.host, given.port) == ("0.0.0.0", 9001)
    publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    port = free_port()
    launcher = ("import argparse, sys; from api.command import add_parser; "
                "p = argparse.ArgumentParser(); add_parser(p.add_subparsers()); "
                "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    # No --port: the port comes from the settings (the environment).
    env = {**os.environ, "HASHATLAS_REDIS_URL": redis_url, "HASHATLAS_REDIS_PREFIX": PREFIX,
           "HASHATLAS_API_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-c", launcher, "api"], env=env, cwd=PROJECT_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/estimates/current", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "api did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.headers["etag"] == '"etag-1"'
    finally:
        server.terminate()
        server.wait(timeout=10)


# ---- fuzzing the OpenAPI description -----------------------------------------------------------


def test_openapi_documents_problems_and_examples(redis_url: str) -> None:
    schema = create_app(make_settings(redis_url)).openapi()
    paths = schema["paths"]
    assert set(paths) >= {"/v1/estimates/current", "/v1/regions/{region}",
                          "/v1/estimates/history", "/v1/network/blocks", "/v1/alerts",
                          "/v1/stream", "/metrics", "/healthz", "/readyz"}
    region = paths["/v1/regions/{region}"]["get"]["responses"]
    assert set(region) >= {"200", "304", "404", "422", "503"}
    assert "application/problem+json" in region["404"]["content"]
    assert "Problem" in schema["components"]["schemas"]
    current = paths["/v1/estimates/current"]["get"]["responses"]["200"]
    assert current["content"]["application/json"]["example"]["network"]["source"] == "fused"
    assert "HTTPValidationError" not in schema["components"]["schemas"]


@pytest.fixture()
def served_api(redis_url: str, store: redis.Redis) -> Iterator[ServerThread]:
    """A served API with Redis holding a snapshot and some of everything."""
    publish_snapshot(store, make_snapshot(time.time()), "etag-1")
    write_history(store, NETWORK_SERIES, network_points(100))
    write_history(store, "US", us_points(100))
    store.zadd(KEYS.blocks, {json.dumps(block(h)): h for h in range(800_000, 800_010)})
    write_alert(store, alert("kz-1", "KZ", "firing", 1000.0))
    # The fuzzing outlasts the usual 30 s staleness limit: /readyz must keep answering 200.
    with ServerThread(create_app(make_settings(redis_url, stale_after_s=3600.0))) as server:
        yield server


def fuzz_operation(operation: Any, mode: GenerationMode, excluded: list[Any]) -> None:
    @hypothesis.settings(max_examples=100, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def call_and_validate(case: Any) -> None:
        case.call_and_validate(excluded_checks=excluded)

    call_and_validate()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_openapi_conformance(served_api: ServerThread, mode: GenerationMode) -> None:
    """Schemathesis-generated requests (valid, then invalid) for every documented operation:
    no 5xx, and status, content type, headers and body all match the OpenAPI description."""
    schema = schemathesis.openapi.from_url(served_api.url + "/openapi.json")
    loaded = list(schema.exclude(path="/v1/stream").get_all_operations())  # endless by design
    operations = [result.ok() for result in loaded if isinstance(result, Ok)]
    # 10 + /v1/pools, /v1/pools/{pool}, /v1/pools/{pool}/history
    assert len(operations) == len(loaded) == 13
    if mode is GenerationMode.NEGATIVE:
        # Only query and path parameters can be made invalid (any header string is valid).
        operations = [op for op in operations if any(
            p.location in (ParameterLocation.QUERY, ParameterLocation.PATH)
            for p in op.iter_parameters())]
    for operation in operations:
        # end >= start and span/step <= 100,000 tie history's parameters together, which
        # OpenAPI cannot express: schema-valid combinations may rightly get a 422 there.
        # A well-formed region code that is not ISO 3166, or an operator the site registry
        # does not list, is rightly refused (422/404) by the sites routes.
        excluded = ([positive_data_acceptance] if operation.path in (
            "/v1/estimates/history", "/v1/sites", "/v1/capacity", "/v1/pools/{pool}/history")
            else [])
        fuzz_operation(operation, mode, excluded)
