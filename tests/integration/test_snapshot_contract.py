"""The snapshot contract end to end: a snapshot the real pipeline published (a worker on the real
Kafka and Redis, fed real blocks, a price and share batches) validates against
streams.models.snapshot.EstimateSnapshot with unknown fields forbidden, the API serves it as
that model, and the served OpenAPI schema documents every property of it."""

from __future__ import annotations

from pathlib import Path

import orjson
import redis

from api.main import create_app
from streams.models.snapshot import EstimateSnapshot
from streams.rediskeys import RedisKeys
from streams.settings import Settings
from tests.integration.api_helpers import open_client
from tests.integration.conftest import produce
from tests.integration.pipeline_helpers import Worker, share_batches, wait_for_snapshot
from tests.schema_checks import object_schemas, open_objects, undescribed_properties

T0 = 1_795_000_000.0
CURRENT = "/v1/estimates/current"


async def test_a_live_snapshot_validates_and_is_served_as_its_model(
    isolated_settings: Settings, tmp_path: Path, test_data: Path
) -> None:
    settings = isolated_settings
    await produce(settings, settings.topics.blocks,
                  list((test_data / "real_blocks.jsonl").read_bytes().splitlines()))
    await produce(settings, settings.topics.market,
                  [{"type": "price", "ts": T0, "btc_usd": 95_000.0}])
    await produce(settings, settings.topics.compacted_shares,
                  list(share_batches(200, T0, 600.0, seed=5)), key=b"k")
    worker = Worker(settings, tmp_path, "w1")
    try:
        await wait_for_snapshot(settings, lambda s: s["network"]["blocks_seen"] == 5
                                and bool(s["regions"]), 90, [worker])
    finally:
        worker.stop()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.hget(RedisKeys(settings.redis_prefix).snapshot, "json")
    finally:
        client.close()
    assert isinstance(raw, bytes)

    published = EstimateSnapshot.model_validate_json(raw)  # extra="forbid" at every level
    # A snapshot with something in each section, so each part of the model was exercised.
    assert published.inputs is not None and published.inputs.partitions
    assert published.regions and published.subdivisions
    assert published.network.hashrate_hs is not None and published.network.tip_height == 722010
    assert published.pools.pools and published.pools.attribution is not None
    assert published.model_dump(mode="json", exclude_unset=True) == orjson.loads(raw)

    app = create_app(settings)
    async for api in open_client(app):
        response = await api.get(CURRENT, headers={"Accept-Encoding": "identity"})
        assert response.status_code == 200
        assert response.content == raw  # served as stored, and so as the model
        EstimateSnapshot.model_validate_json(response.content)
        schema = (await api.get("/openapi.json")).json()
    served = schema["paths"][CURRENT]["get"]["responses"]["200"]["content"]["application/json"]
    assert served["schema"] == {"$ref": "#/components/schemas/EstimateSnapshot"}
    objects = object_schemas(served["schema"], schema["components"]["schemas"])
    assert {"EstimateSnapshot", "NetworkEntry", "RegionEntry", "PowerBand", "PoolsSection",
            "PoolEntry", "PoolValidation", "SiteUtilisation", "SnapshotInputs"} <= set(objects)
    assert undescribed_properties(objects) == []
    assert open_objects(objects) == []
