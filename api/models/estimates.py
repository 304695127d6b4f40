"""Response models of the region, history, blocks and alerts routes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from api.models.examples import EXAMPLE_ALERT, EXAMPLE_REGION
from streams.contracts import PoolDivergenceAlert, RegionalShiftAlert
from streams.models.snapshot import RegionEntry


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
