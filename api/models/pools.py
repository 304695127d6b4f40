"""Response models of the pool routes: the snapshot's pools section (its model is the snapshot's
own), one pool, and a pool's history."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from streams.models.snapshot import PoolEntry, PoolsSection

AS_OF_DESCRIPTION = "as_of of the snapshot the section comes from, Unix seconds"
STALE_DESCRIPTION = "Whether that snapshot is stale (see the snapshot's stale)"


class PoolsResponse(PoolsSection):
    """The snapshot's pools section, largest pool first, with the snapshot's time and
    staleness."""

    as_of: float = Field(description=AS_OF_DESCRIPTION)
    stale: bool = Field(description=STALE_DESCRIPTION)


class PoolResponse(PoolEntry):
    """One pool's entry of the snapshot's pools section, with the snapshot's time and
    staleness."""

    as_of: float = Field(description=AS_OF_DESCRIPTION)
    stale: bool = Field(description=STALE_DESCRIPTION)


class PoolHistoryResponse(BaseModel):
    pool: str
    start: float
    end: float
    step: float
    points: list[dict[str, Any]]
