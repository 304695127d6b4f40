"""What the API tests share: settings, an in-process client, problem assertions, and a complete
snapshot (valid against streams.models.snapshot.EstimateSnapshot) written to Redis exactly as
the snapshot publisher writes it (streams/rediskeys.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import redis
from fastapi import FastAPI

from streams.models.chain import ChainSummary
from streams.models.snapshot import (
    EstimateSnapshot,
    HashpriceSummary,
    NetworkEntry,
    PoolsSection,
    PowerBand,
    RegionEntry,
    ShareSeParts,
)
from streams.rediskeys import RedisKeys
from streams.settings import Settings

PREFIX = "hatest"
KEYS = RedisKeys(PREFIX)
AS_OF = 1_732_400_000.0


def band(best: float) -> PowerBand:
    return PowerBand(lower=best * 0.6, best=best, upper=best * 1.6)


def region_entry(code: str, name: str, share: float, subdivisions: list[str] | None = None
                 ) -> RegionEntry:
    hashrate = 7.5e20 * share
    return RegionEntry(
        region=code, name=name, share=share, share_ci95=(share * 0.97, share * 1.03),
        sampling_ci95=(share * 0.999, share * 1.001),
        share_se_parts=ShareSeParts(sampling=share * 0.0005, pool_weights=0.0,
                                    heterogeneity=share * 0.012, clustering=share * 0.007),
        hashrate_hs=hashrate, hashrate_ci95_hs=(hashrate * 0.96, hashrate * 1.04),
        sample_hashrate_hs=hashrate * 0.41,
        sample_hashrate_ci95_hs=(hashrate * 0.41 * 0.99, hashrate * 0.41 * 1.01),
        power_w=band(1.9e10 * share), annualized_twh=band(166.6 * share),
        electricity_usd_kwh=0.05, subdivisions=subdivisions or [],
    )


def make_snapshot(published_at: float, *, as_of: float = AS_OF,
                  regions: list[RegionEntry] | None = None) -> EstimateSnapshot:
    """The snapshot; ``regions`` (default: six, US with two subdivisions) its region entries."""
    regions = regions or [
        region_entry("US", "United States", 0.378, ["US-TX", "US-GA"]),
        region_entry("US-TX", "Texas", 0.15),
        region_entry("US-GA", "Georgia", 0.05),
        region_entry("CN", "China", 0.21),
        region_entry("KZ", "Kazakhstan", 0.13),
        region_entry("ZZ", "Unknown", 0.03),
    ]
    network = NetworkEntry(
        hashrate_hs=7.5e20, hashrate_ci95_hs=(7.2e20, 7.8e20), source="fused",
        sources=["shares", "coverage", "blocks"], coverage=0.41, coverage_ci95=(0.37, 0.45),
        coverage_status="stable", coverage_long_window=0.405, coverage_shift_z=0.4,
        interval_note="coverage 0.41 (stable)",
        unlisted_region_share_max=0.63, sample_hashrate_hs=3.1e20,
        power_w=PowerBand(lower=1.2e10, best=1.9e10, upper=3.1e10),
        annualized_twh=PowerBand(lower=105.2, best=166.6, upper=271.7),
        hashprice_usd_ph_day=52.1, profitability_threshold_j_gh=0.041,
        block_hashrate_hs=7.4e20, block_hashrate_ci95_hs=(6.2e20, 8.9e20), blocks_seen=2016,
        tip_height=872_000, implausible_pools={},
    )
    pools = PoolsSection(windows=[144, 1008, 2016], tip_height=872_000, rate_window_s=None,
                         pools=[], diverging=[], attribution=None,
                         hashprice=HashpriceSummary(blocks=0), groups={})
    return EstimateSnapshot(type="estimate", as_of=as_of, published_at=published_at,
                            window_s=300, stale=False, max_event_ts=as_of, network=network,
                            regions=regions, subdivisions=[], pools=pools, site_utilisation=[])


def pattern_chain(pattern: Sequence[str], blocks: int, *, first_height: int, first_time: float,
                  difficulty: float, subsidy_sat: int, fees_sat: int,
                  names: Mapping[str, str]) -> ChainSummary:
    """A chain summary whose blocks, 600 s apart at one difficulty, cycle through ``pattern``
    (``unknown``: blocks no pool claims), for building a snapshot's pools section."""
    pools = [pattern[i % len(pattern)] for i in range(blocks)]
    return ChainSummary(
        blocks=blocks, tip_height=first_height + blocks - 1, coverage_pools=pools,
        coverage_works=[difficulty * 2**32] * blocks,
        coverage_heights=[first_height + i for i in range(blocks)],
        coverage_times=[first_time + 600.0 * i for i in range(blocks)],
        coverage_difficulties=[difficulty] * blocks,
        coverage_details=["unknown" if p == "unknown" else "both" for p in pools],
        coverage_conflicts=[None] * blocks,
        coverage_subsidies=[subsidy_sat] * blocks, coverage_fees=[fees_sat] * blocks,
        pool_names=dict(names),
    )


def publish_snapshot(client: redis.Redis, snapshot: EstimateSnapshot, etag: str,
                     keys: RedisKeys = KEYS) -> bytes:
    """One MULTI/EXEC, as the snapshot publisher does; returns the stored JSON bytes."""
    body = snapshot.model_dump_json().encode()
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.snapshot, mapping={"json": body, "etag": etag, "as_of": str(snapshot.as_of),
                                      "published_at": str(snapshot.published_at)})
    for entry in snapshot.regions:
        pipe.set(keys.region(entry.region), entry.model_dump_json())
    pipe.delete(keys.regions)
    pipe.sadd(keys.regions, *[entry.region for entry in snapshot.regions])
    pipe.execute()
    return body


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": redis_url, "redis_prefix": PREFIX,
                              "stale_after_s": 30.0, "snapshot_interval_s": 1.0,
                              "history_step_s": 60.0}
    values.update(overrides)
    return Settings(**values)


async def open_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("urn:hashatlas:problem:")
    assert problem["title"] and problem["detail"]
    return problem


def assert_names_parameter(response: httpx.Response, name: str) -> None:
    problem = assert_problem(response, 422)
    assert name in [param["name"] for param in problem["invalid_params"]], problem
