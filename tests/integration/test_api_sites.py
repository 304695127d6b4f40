"""The sites routes (``/v1/sites``, ``/v1/capacity``) and their metrics, on the real app.

Built like tests/integration/test_api.py (the app's lifespan opens its Redis clients on the test
session's Redis); the answers are compared with the shipped registry and with registries of the
test's own given through ``sites_file``.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from streams.commands.sites import shipped_sites
from streams.core import sites as core
from tests.integration.api_helpers import (
    KEYS,
    assert_problem,
    make_settings,
    make_snapshot,
    open_client,
    publish_snapshot,
)

HEADER = ",".join(core.COLUMNS)
MINE = "\n".join([
    HEADER,
    "Op A,Alpha,US,US-TX,31.0,-97.0,100,50,mining,2023-01-31,Op A 10-K 2022 p. 4,",
    "Op A,Alpha,US,US-TX,31.0,-97.0,,200,hpc,2024-06-30,Op A 10-Q Q2 2024 p. 9,",
    "Op B,Beta,CA,CA-QC,,,40,0,mining,2024-03-31,Op B annual report 2024,",
    "Op B,Gamma,XX,,,,40,0,mining,2024-03-31,bad country,",
    "Op C,Delta,US,US-GA,,,-1,0,mining,2024-03-31,negative,",
]) + "\n"


@pytest.fixture()
async def api_mine(redis_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    path = tmp_path / "mine.csv"
    path.write_text(MINE, encoding="utf-8")
    settings = make_settings(redis_url, sites_file=path, sites_mode="replace")
    async for client in open_client(create_app(settings)):
        yield client


async def test_sites_serves_each_sites_latest_row_with_its_source(
        api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/sites")
    assert response.status_code == 200
    body = response.json()
    expected = core.latest(shipped_sites())
    assert body["count"] == len(body["sites"]) == len(expected)
    assert [s["site"] for s in body["sites"]] == [s.site for s in expected]
    assert all(s["source"] and s["as_of"] for s in body["sites"])


async def test_sites_filters(api: httpx.AsyncClient) -> None:
    texas = (await api.get("/v1/sites", params={"region": "us-tx"})).json()["sites"]
    assert texas and {s["subdivision"] for s in texas} == {"US-TX"}
    canada = (await api.get("/v1/sites", params={"region": "CA"})).json()["sites"]
    assert canada and {s["country"] for s in canada} == {"CA"}
    hpc = (await api.get("/v1/sites", params={"status": "hpc"})).json()["sites"]
    assert hpc and {s["status"] for s in hpc} == {"hpc"}
    riot = (await api.get("/v1/sites", params={"operator": "Riot Platforms"})).json()["sites"]
    assert {s["operator"] for s in riot} == {"Riot Platforms"}
    history = (await api.get("/v1/sites", params={"operator": "Core Scientific",
                                                  "region": "US-TX", "history": "true"})).json()
    denton = [s for s in history["sites"] if s["site"] == "Denton"]
    assert [s["status"] for s in denton] == ["mining", "hpc"]
    before = (await api.get("/v1/sites", params={"operator": "Core Scientific",
                                                 "at": "2024-06-30"})).json()["sites"]
    assert next(s for s in before if s["site"] == "Denton")["status"] == "mining"


@pytest.mark.parametrize(("params", "name"), [
    ({"region": "XX"}, "region"), ({"region": "US-T_X"}, "region"),
    ({"status": "dreaming"}, "status"), ({"operator": "Nobody Mining"}, "operator"),
    ({"format": "xml"}, "format"), ({"at": "2024-13-01"}, "at"), ({"at": "0.0"}, "at"),
])
async def test_sites_bad_parameters_are_named_problems(api: httpx.AsyncClient,
                                                        params: dict[str, str],
                                                        name: str) -> None:
    problem = assert_problem(await api.get("/v1/sites", params=params), 422)
    assert [p["name"] for p in problem["invalid_params"]] == [name]


async def test_sites_csv_and_geojson(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/sites", params={"format": "csv", "region": "CA"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows and tuple(rows[0]) == core.COLUMNS
    assert {r["country"] for r in rows} == {"CA"}
    geo = await api.get("/v1/sites", params={"format": "geojson"})
    assert geo.headers["content-type"] == "application/geo+json"
    document = geo.json()
    assert document["type"] == "FeatureCollection"
    assert len(document["features"]) == len(core.latest(shipped_sites()))
    reparsed = core.parse_geojson(geo.text)
    assert reparsed.errors == ()


async def test_capacity_by_status_with_history(api: httpx.AsyncClient) -> None:
    body = (await api.get("/v1/capacity", params={"region": "US-TX"})).json()
    state = [s for s in core.latest(shipped_sites()) if s.subdivision == "US-TX"]
    assert body["name"] == "Texas" and body["sites"] == len(state)
    assert body["energised_mw"] == pytest.approx(math.fsum(s.energised for s in state))
    assert math.fsum(v["energised_mw"] for v in body["by_status"].values()) == pytest.approx(
        body["energised_mw"])
    dates = [point["as_of"] for point in body["history"]]
    assert dates == sorted(dates) and len(dates) > 1
    assert body["moved_to_hpc"][0]["sites"] == ["Core Scientific / Denton"]
    empty = (await api.get("/v1/capacity", params={"region": "FR"})).json()
    assert empty["sites"] == 0 and empty["history"] == []


async def test_capacity_unknown_region_is_404(api: httpx.AsyncClient) -> None:
    problem = assert_problem(await api.get("/v1/capacity", params={"region": "XX"}), 404)
    assert "XX" in problem["detail"]
    assert_problem(await api.get("/v1/capacity"), 422)


async def test_a_registry_of_your_own_with_broken_rows(api_mine: httpx.AsyncClient) -> None:
    """Bad rows are left out (and logged), the good ones served; replace mode drops the
    shipped registry."""
    body = (await api_mine.get("/v1/sites", params={"history": "true"})).json()
    assert [(s["site"], s["as_of"]) for s in body["sites"]] == [
        ("Alpha", "2023-01-31"), ("Alpha", "2024-06-30"), ("Beta", "2024-03-31")]
    capacity = (await api_mine.get("/v1/capacity", params={"region": "US"})).json()
    assert capacity["by_status"]["hpc"] == {"energised_mw": 0.0, "planned_mw": 200.0}
    assert capacity["moved_to_hpc"] == [{"as_of": "2024-06-30", "moved_mw": 100.0,
                                         "cumulative_mw": 100.0, "sites": ["Op A / Alpha"]}]


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_metrics_capacity_and_utilisation(api: httpx.AsyncClient,
                                                store: redis.Redis) -> None:
    snapshot = make_snapshot(time.time())
    publish_snapshot(store, snapshot, "etag-sites")
    try:
        text = (await api.get("/metrics")).text
    finally:
        store.delete(KEYS.snapshot)
    capacity = metric_samples(text, "hashatlas_site_capacity_watts")
    state = core.latest(shipped_sites())
    assert math.fsum(capacity.values()) == pytest.approx(
        math.fsum(s.energised for s in state) * 1e6)
    regions = {dict(labels)["region"] for labels in capacity}
    assert len(regions) <= 11  # top 10 and other
    ratio = metric_samples(text, "hashatlas_region_site_utilisation_ratio")
    mining = core.mining_capacity_w(state)
    entries: dict[str, Any] = {e.region: e for e in snapshot.regions}
    for region in ("US", "US-TX", "US-GA"):
        best = ratio[(("band", "best"), ("region", region))]
        assert best == pytest.approx(entries[region].power_w.best / mining[region])
