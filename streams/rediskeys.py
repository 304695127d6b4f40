"""The Redis key layout, shared by the pipeline (writer) and the API (reader).

Everything the API serves is written by the snapshot publisher in one MULTI/EXEC transaction, so a
reader never sees a snapshot from one second and region entries from another.

| key | type | content |
|---|---|---|
| ``{p}:snapshot`` | hash | ``json`` (the full snapshot), ``etag``, ``as_of``, ``published_at`` |
| ``{p}:region:{code}`` | string | one region's entry as JSON (same transaction as the snapshot) |
| ``{p}:regions`` | set | region codes present in the current snapshot |
| ``{p}:history:{series}`` | sorted set | history points (score = t), ``network`` or a region |
| ``{p}:blocks`` | sorted set | recent blocks as JSON (score = height) |
| ``{p}:alerts`` | sorted set | alerts as JSON (score = time of the state change) |
| ``{p}:events`` | pub/sub channel | ``{"event": "estimate"|"alert", "data": {...}}`` for SSE |
| ``{p}:partial:{partition}`` | string | a partition's partial aggregates for the snapshot leader |
| ``{p}:partial:blocks`` / ``{p}:partial:market`` | string | chain summary / latest price |
| ``{p}:clock`` | string | newest event time merged by the leader (workers evaluate there) |
| ``{p}:leader`` | string | the snapshot leader's own state (shift detector, last step) |
"""

from __future__ import annotations

from dataclasses import dataclass

NETWORK_SERIES = "network"


@dataclass(frozen=True)
class RedisKeys:
    """Key names under one prefix (so several deployments can share a Redis)."""

    prefix: str = "hashatlas"

    @property
    def snapshot(self) -> str:
        return f"{self.prefix}:snapshot"

    def region(self, code: str) -> str:
        return f"{self.prefix}:region:{code}"

    @property
    def regions(self) -> str:
        return f"{self.prefix}:regions"

    def history(self, series: str) -> str:
        return f"{self.prefix}:history:{series}"

    @property
    def blocks(self) -> str:
        return f"{self.prefix}:blocks"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}:alerts"

    @property
    def events_channel(self) -> str:
        return f"{self.prefix}:events"

    def partial(self, partition: int | str) -> str:
        return f"{self.prefix}:partial:{partition}"

    @property
    def clock(self) -> str:
        return f"{self.prefix}:clock"

    @property
    def leader(self) -> str:
        return f"{self.prefix}:leader"


SNAPSHOT_FIELDS = ("json", "etag", "as_of", "published_at")
