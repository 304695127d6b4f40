"""Response models of the liveness and readiness probes."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    snapshot_age_s: float = Field(examples=[0.7])
