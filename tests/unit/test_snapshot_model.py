"""The snapshot's typed model describes exactly what build_snapshot produces (nothing unknown,
nothing undescribed), on the hand-checked world of test_snapshot.py."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from api.models.estimates import RegionResponse
from api.models.examples import EXAMPLE_REGION, EXAMPLE_SNAPSHOT
from streams.models.snapshot import EstimateSnapshot
from tests.schema_checks import object_schemas, open_objects, undescribed_properties
from tests.unit.test_snapshot import H, _build, _sample, _totals


def _worlds() -> list[dict[str, Any]]:
    honest = _build(_sample())
    rogue = _build(_sample({("viabtc", "RU"): _totals(10 * H)}))  # set aside as implausible
    return [honest, rogue]


@pytest.mark.parametrize("world", ["honest", "rogue"])
def test_build_snapshot_output_validates_with_unknown_fields_forbidden(world: str) -> None:
    snapshot = _worlds()[0 if world == "honest" else 1]
    assert snapshot["regions"] and snapshot["subdivisions"] and snapshot["pools"]["pools"]
    model = EstimateSnapshot.model_validate(snapshot)
    # The JSON the leader publishes (orjson: NaN would become null) validates as well.
    EstimateSnapshot.model_validate_json(orjson.dumps(snapshot))
    # Nothing is lost or changed on the way through the model.
    assert model.model_dump(mode="json", exclude_unset=True) == orjson.loads(
        orjson.dumps(snapshot))
    assert "inputs" not in snapshot  # the leader adds it when it publishes


@pytest.mark.parametrize("where", [(), ("network",), ("regions", 0), ("pools",),
                                   ("pools", "pools", 0, "hashrate", "144"),
                                   ("pools", "pools", 0, "validation")])
def test_an_undescribed_field_anywhere_is_refused(where: tuple[str | int, ...]) -> None:
    snapshot = copy.deepcopy(_worlds()[0])
    target: Any = snapshot
    for step in where:
        target = target[step]
    target["a_new_field"] = 1.0
    with pytest.raises(ValidationError, match="a_new_field"):
        EstimateSnapshot.model_validate(snapshot)


def test_a_missing_field_is_refused() -> None:
    snapshot = _worlds()[0]
    del snapshot["network"]["implausible_pools"]
    with pytest.raises(ValidationError, match="implausible_pools"):
        EstimateSnapshot.model_validate(snapshot)


def test_every_field_is_described_and_every_object_closed() -> None:
    schema = EstimateSnapshot.model_json_schema()
    objects = object_schemas(schema, schema.get("$defs", {}))
    assert {"$", "NetworkEntry", "RegionEntry", "PoolsSection", "PoolEntry",
            "PoolDivergence", "SiteUtilisation", "SnapshotInputs"} <= set(objects)
    assert undescribed_properties(objects) == []
    assert open_objects(objects) == []


def test_the_documented_examples_are_valid() -> None:
    EstimateSnapshot.model_validate(EXAMPLE_SNAPSHOT)
    RegionResponse.model_validate({**EXAMPLE_REGION, "as_of": 1732400000.0, "stale": False})
