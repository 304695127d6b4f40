"""The snapshot leader: merge the partitions' partials, build the snapshot, publish it.

Runs on exactly one worker at a time (Faust's leader). Everything it writes for the API goes to
Redis in one MULTI/EXEC transaction; the same snapshot goes to the ``estimates`` topic, alerts to
``alerts``, and both to the SSE channel. What must survive a change of leader (shift detector,
last history step, threshold smoothing) is kept in Redis next to the data it describes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from streams.core.pools import ALERT_TYPE as POOL_ALERT_TYPE
from streams.core.pools import PoolMemory, pool_history_points
from streams.core.shifts import ShiftDetector, shift_params
from streams.core.snapshot import (
    EstimationConfig,
    MergedSample,
    SnapshotMemory,
    build_snapshot,
    history_points,
    merge_partials,
    shares_for_detection,
)
from streams.metrics import (
    ALERTS_PUBLISHED,
    POOL_DIVERGENCE_ALERTS,
    SNAPSHOT_PUBLISH_SECONDS,
    SNAPSHOTS_PUBLISHED,
)
from streams.models.chain import ChainSummary, decode_chain_summary
from streams.models.partials import SharePartial, decode_price_partial, decode_share_partial
from streams.models.snapshot import EstimateSnapshot
from streams.pipeline.recovery import rebuild_from_kafka
from streams.rediskeys import RedisKeys
from streams.settings import Settings
from streams.webhook import AlertWebhook

log = logging.getLogger("hashatlas.publisher")

Send = Callable[[str, bytes], Awaitable[Any]]
Raw = bytes | str | None  # a value as Redis returns it


class SnapshotPublisher:
    """Builds and publishes snapshots; owns the leader's carried-over state."""

    def __init__(self, settings: Settings, config: EstimationConfig, redis: aioredis.Redis,
                 send: Send) -> None:
        self.settings = settings
        self.config = config
        self.redis = redis
        self.send = send
        self.keys = RedisKeys(settings.redis_prefix)
        self.memory = SnapshotMemory()
        self.detector = ShiftDetector(shift_params(settings.shift_min_subdivision_share))
        self.last_step: float | None = None
        self._loaded = False
        self.webhook = (
            AlertWebhook(settings.alert_webhook_url,
                         settings.alert_webhook_secret.get_secret_value()
                         if settings.alert_webhook_secret else "")
            if settings.alert_webhook_url else None
        )

    def _restore(self, body: dict[str, Any]) -> None:
        try:
            self.detector = ShiftDetector.from_state(body["detector"])
        except (ValueError, KeyError, TypeError) as exc:  # e.g. a state of an older version
            log.warning("shift detector state unusable (%s): detection starts cold", exc)
            self.detector = ShiftDetector(shift_params(self.settings.shift_min_subdivision_share))
        self.last_step = body.get("last_step")
        self.memory = SnapshotMemory(body.get("threshold_j_gh"), body.get("threshold_at"))

    async def _recover(self, leader_raw: bytes | str | None) -> None:
        """Take over the leader state; if Redis lost everything, refill it from Kafka first."""
        if leader_raw is not None:
            if not self._loaded:
                self._restore(orjson.loads(leader_raw))
        else:
            log.warning("Redis holds no leader state: rebuilding history and alerts from Kafka")
            from_kafka = await rebuild_from_kafka(self.settings, self.redis)
            if from_kafka is not None and self.last_step is None:
                self._restore(from_kafka)
            await self.redis.set(self.keys.leader, self._leader_state())
        await self._restore_pools()
        self._loaded = True

    @property
    def _pools_key(self) -> str:
        # Its own key, not the leader state: the luck ledger (~2016 heights × sampled pools) is
        # too large to repeat in every history message; after a Redis loss luck refills.
        return f"{self.keys.prefix}:pools:memory"

    async def _restore_pools(self) -> None:
        raw = await self.redis.get(self._pools_key)
        if raw is None:
            return
        try:
            self.memory.pools = PoolMemory.from_state(orjson.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("pool luck memory in Redis unusable (%s): starting it afresh", exc)

    def _leader_state(self) -> bytes:
        return orjson.dumps({
            "detector": self.detector.to_state(),
            "last_step": self.last_step,
            "threshold_j_gh": self.memory.threshold_j_gh,
            "threshold_at": self.memory.threshold_at,
        })

    async def publish(self) -> dict[str, Any] | None:
        """One snapshot from what the workers last wrote; None when there is nothing yet."""
        started = time.perf_counter()
        partials, chain_raw, market_raw = await self._read_inputs()
        merged = merge_partials(partials)
        if merged is None:
            return None
        now = time.time()
        snapshot = self._snapshot(partials, merged, chain_raw, market_raw, now)
        body = orjson.dumps(snapshot)
        # What the API serves: no field undescribed. The JSON, not the dict: orjson turns a NaN
        # into null, which only this check refuses where a number is due.
        EstimateSnapshot.model_validate_json(body)
        step = self.settings.history_step_s
        step_t = (merged.as_of // step) * step
        pipe = self.redis.pipeline(transaction=True)
        self._write_snapshot(pipe, snapshot, body, merged, now)
        step_points, alerts = self._history_step(pipe, snapshot, step_t)
        alerts.extend(self.memory.pools.drain_alerts())
        alerts = [{**alert, "updated_at": now,
                   "changed_at": alert["detected_at"] if alert["state"] == "firing" else step_t}
                  for alert in alerts]
        for alert in alerts:
            pipe.zadd(self.keys.alerts, {orjson.dumps(alert): alert["changed_at"]})
            pipe.publish(self.keys.events_channel,
                         orjson.dumps({"event": "alert", "data": alert}))
        pipe.publish(self.keys.events_channel, b'{"event":"estimate","data":' + body + b"}")
        await pipe.execute()
        await self._send_outputs(body, step_t, step_points, alerts)
        SNAPSHOTS_PUBLISHED.inc()
        SNAPSHOT_PUBLISH_SECONDS.observe(time.perf_counter() - started)
        return snapshot

    async def _read_inputs(self) -> tuple[list[SharePartial], Raw, Raw]:
        """The share partials, the chain summary and the price the workers last wrote (taking
        over the leader state first if this leader has not yet)."""
        partitions = range(self.settings.partitions.compacted_shares)
        raw = await self.redis.mget(
            [self.keys.partial(p) for p in partitions]
            + [self.keys.partial("blocks"), self.keys.partial("market"), self.keys.leader]
        )
        if not self._loaded or raw[-1] is None:
            await self._recover(raw[-1])
        *share_raw, chain_raw, market_raw = raw[:-1]
        return [decode_share_partial(r) for r in share_raw if r], chain_raw, market_raw

    def _snapshot(self, partials: list[SharePartial], merged: MergedSample,
                  chain_raw: Raw, market_raw: Raw, now: float) -> dict[str, Any]:
        chain = decode_chain_summary(chain_raw) if chain_raw else ChainSummary()
        market = decode_price_partial(market_raw) if market_raw else None
        last_event_wall = max(p.last_event_wall for p in partials)
        stale = now - last_event_wall > self.settings.stale_after_s
        snapshot = build_snapshot(
            merged, chain, market.btc_usd if market else None, self.config, self.memory,
            published_at=now, stale=stale,
        )
        snapshot["inputs"] = {
            "partitions": {str(p.partition): p.next_offset for p in partials},
            "evaluated_at": {str(p.partition): p.t_eval for p in partials},
        }
        return snapshot

    def _write_snapshot(self, pipe: Any, snapshot: dict[str, Any], body: bytes,
                        merged: MergedSample, now: float) -> None:
        """The snapshot, its regions and the leader's clock, for the API and the workers."""
        etag = hashlib.blake2b(body, digest_size=12).hexdigest()
        pipe.hset(self.keys.snapshot, mapping={
            "json": body, "etag": etag, "as_of": str(merged.as_of), "published_at": str(now),
        })
        codes = [e["region"] for e in [*snapshot["regions"], *snapshot["subdivisions"]]]
        pipe.delete(self.keys.regions)
        for entry in [*snapshot["regions"], *snapshot["subdivisions"]]:
            pipe.set(self.keys.region(entry["region"]), orjson.dumps(entry))
        if codes:
            pipe.sadd(self.keys.regions, *codes)
        pipe.set(self.keys.clock, str(merged.max_event_ts))

    def _history_step(self, pipe: Any, snapshot: dict[str, Any],
                      step_t: float) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """At a new history step: its points and the shift detector's alerts (none between
        steps), and the leader state that carries over."""
        alerts: list[dict[str, Any]] = []
        step_points: dict[str, dict[str, Any]] = {}
        if self.last_step is not None and step_t <= self.last_step:
            return step_points, alerts
        if snapshot["network"]["hashrate_hs"] is not None:
            step_points = history_points(snapshot, step_t)
            step_points.update(pool_history_points(snapshot.get("pools") or {}, step_t))
            for series, point in step_points.items():
                key = self.keys.history(series)
                pipe.zremrangebyscore(key, step_t, step_t)
                pipe.zadd(key, {orjson.dumps(point): step_t})
                pipe.zremrangebyscore(key, "-inf", step_t - self.settings.history_retention_s)
            alerts = self.detector.update(step_t, shares_for_detection(snapshot))
        self.last_step = step_t
        pipe.set(self.keys.leader, self._leader_state())
        pipe.set(self._pools_key, orjson.dumps(self.memory.pools.to_state()))
        return step_points, alerts

    async def _send_outputs(self, body: bytes, step_t: float,
                            step_points: dict[str, dict[str, Any]],
                            alerts: list[dict[str, Any]]) -> None:
        """The snapshot, the history step and the alerts to Kafka; alerts to the webhook."""
        await self.send(self.settings.topics.estimates, body)
        if step_points:
            await self.send(self.settings.topics.history, orjson.dumps({
                "t": step_t, "points": step_points, "leader": orjson.loads(self._leader_state()),
            }))
        for alert in alerts:
            await self.send(self.settings.topics.alerts, orjson.dumps(alert))
            counter = (POOL_DIVERGENCE_ALERTS if alert.get("type") == POOL_ALERT_TYPE
                       else ALERTS_PUBLISHED)
            counter.labels(alert["state"]).inc()
            if self.webhook is not None:
                self.webhook.offer(alert)
