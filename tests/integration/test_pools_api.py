"""Pool endpoints against a real Redis holding a snapshot with a `pools` section (#15)."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import httpx
import orjson
import pytest
import redis

from streams.core.pools import PoolMemory, pool_history_points, pools_section
from streams.models.chain import ChainSummary
from tests.integration.api_helpers import (
    KEYS,
    assert_names_parameter,
    assert_problem,
    make_snapshot,
    pattern_chain,
)

T0 = 1_732_000_000.0
D = 6e20 * 600 / 2**32


def chain_summary(blocks: int) -> ChainSummary:
    return pattern_chain(
        ["foundry-usa"] * 3 + ["antpool"] * 2 + ["unknown"], blocks, first_height=870_000,
        first_time=T0, difficulty=D, subsidy_sat=312_500_000, fees_sat=5_000_000,
        names={"foundry-usa": "Foundry USA", "antpool": "AntPool", "unknown": "Unknown"})


class _Rate:
    def __init__(self, hashrate: float) -> None:
        self.hashrate_hs = hashrate


def publish_with_pools(client: redis.Redis) -> dict[str, Any]:
    memory = PoolMemory()
    rates = {900.0: {("foundry-usa", "US"): _Rate(0.5 * 6e20)}}
    pools_section(T0, rates, chain_summary(100), 6e20, (5.8e20, 6.2e20), 60_000.0, memory)
    section = pools_section(T0 + 600 * 300, rates, chain_summary(400), 6e20, (5.8e20, 6.2e20),
                            60_000.0, memory)
    snapshot = orjson.loads(make_snapshot(time.time()).model_dump_json())
    snapshot["pools"] = section
    body = orjson.dumps(snapshot)
    client.hset(KEYS.snapshot, mapping={"json": body, "etag": "e1", "as_of": str(T0),
                                        "published_at": str(time.time())})
    for series, point in pool_history_points(section, 1_732_400_040.0).items():
        client.zadd(KEYS.history(series), {orjson.dumps(point): point["t"]})
    return section


async def test_pools_list_and_one_pool(api: httpx.AsyncClient, store: redis.Redis) -> None:
    section = publish_with_pools(store)
    response = await api.get("/v1/pools")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["pool"] for p in body["pools"]] == ["foundry-usa", "antpool", "unknown"]
    assert body["attribution"] == section["attribution"]
    assert body["hashprice"]["hashprice_sats_th_day"] == pytest.approx(
        317_500_000 * 86400e12 / (D * 2**32))
    foundry = (await api.get("/v1/pools/Foundry-USA")).json()
    assert foundry["pool"] == "foundry-usa" and foundry["sampled"] is True
    # Shares show 50 % of the network, blocks 50 % (3 of 6): consistent, luck ≈ 1.
    assert foundry["validation"]["status"] == "consistent"
    assert foundry["luck"]["144"]["luck"] == pytest.approx(1.0, rel=0.05)
    lo, hi = foundry["hashrate"]["144"]["hashrate_ci95_hs"]
    assert lo < foundry["hashrate"]["144"]["hashrate_hs"] < hi
    assert (await api.get("/v1/pools/antpool")).json()["validation"]["status"] == "not_sampled"


async def test_pool_problems(api: httpx.AsyncClient, store: redis.Redis) -> None:
    assert_problem(await api.get("/v1/pools"), 503)  # no snapshot yet
    publish_with_pools(store)
    assert_problem(await api.get("/v1/pools/no-such-pool"), 404)
    assert_problem(await api.get("/v1/pools/no-such-pool/history"), 404)
    assert_names_parameter(await api.get("/v1/pools/bad_pool!"), "pool")
    assert_names_parameter(await api.get("/v1/pools/antpool/history?step=1"), "step")
    assert_names_parameter(await api.get("/v1/pools/antpool/history?start=10&end=5"), "end")
    assert_names_parameter(await api.get("/v1/pools/antpool/history?format=xml"), "format")


async def test_pool_history_json_and_csv(api: httpx.AsyncClient, store: redis.Redis) -> None:
    publish_with_pools(store)
    span = "start=1732400000&end=1732400100"
    body = (await api.get(f"/v1/pools/foundry-usa/history?{span}")).json()
    assert body["pool"] == "foundry-usa" and len(body["points"]) == 1
    assert body["points"][0]["luck_144"] == pytest.approx(1.0, rel=0.05)
    response = await api.get(f"/v1/pools/foundry-usa/history?{span}&format=csv")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows[0]["status"] == "consistent" and float(rows[0]["t"]) == 1_732_400_040.0
