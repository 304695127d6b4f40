"""Typed request dependencies: the settings and the store that reads the pipeline's Redis keys.

The store's async Redis clients (one pool for requests, one for event-stream subscriptions) are
made once in the app's lifespan and closed at shutdown, so no request pays for a new connection
and a stopped server leaves no sockets behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from streams.rediskeys import RedisKeys
from streams.settings import Settings

# At most this many alert state changes are read per request (newest first): the pipeline keeps
# the alerts sorted set trimmed, this only bounds the work if it ever did not.
MAX_ALERT_RECORDS = 10_000

# Short timeouts: a request should fail fast with a 503 rather than hang behind a dead Redis.
REDIS_CONNECT_TIMEOUT_S = 1.0
REDIS_SOCKET_TIMEOUT_S = 2.0
# Requests share a bounded pool and wait (up to the socket timeout) for a free connection;
# event streams hold a connection each for as long as the client listens, so they get their
# own pool, whose size caps the stream clients one process serves.
REQUEST_CONNECTIONS = 64
STREAM_CONNECTIONS = 1024


def create_redis(settings: Settings, *, for_streams: bool = False) -> Redis:
    """A client over its own pool; it retries once at once (a pooled socket may predate a
    Redis restart). ``for_streams``: the pool for pub/sub subscriptions."""
    options: dict[str, Any] = {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "retry": Retry(NoBackoff(), retries=1),
        "decode_responses": False,
    }
    pool: ConnectionPool
    if for_streams:
        pool = ConnectionPool.from_url(
            settings.redis_url, max_connections=STREAM_CONNECTIONS, **options
        )
    else:
        pool = BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=REQUEST_CONNECTIONS,
            timeout=REDIS_SOCKET_TIMEOUT_S, **options,
        )
    return Redis.from_pool(pool)


@asynccontextmanager
async def redis_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the shared Redis clients for the app's lifetime."""
    settings: Settings = app.state.settings
    client = create_redis(settings)
    streams_client = create_redis(settings, for_streams=True)
    app.state.store = EstimateStore(client, streams_client, RedisKeys(settings.redis_prefix))
    try:
        yield
    finally:
        await client.aclose()
        await streams_client.aclose()


@dataclass(frozen=True)
class StoredSnapshot:
    """The snapshot hash as the pipeline wrote it; ``json`` is passed through untouched."""

    json: bytes
    etag: str
    published_at: float


@dataclass(frozen=True)
class SnapshotHead:
    """The snapshot's identity and age, without its (large) body."""

    etag: str
    as_of: float
    published_at: float


class _ReadAbandoned:
    """Told to callers sharing a read whose leading caller was cancelled: read yourselves."""


class EstimateStore:
    """Reads exactly what the pipeline writes (streams/rediskeys.py); never computes estimates."""

    def __init__(self, redis: Redis, streams_redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.streams_redis = streams_redis
        self.keys = keys
        self._snapshot_waiters: list[asyncio.Future[Any]] | None = None

    async def snapshot(self) -> StoredSnapshot | None:
        """The current snapshot; callers that arrive while a read is in flight share it.

        Under load many requests want the same hash at once; sharing one HMGET among them
        (request coalescing) takes Redis and the client library off most requests' path. A
        shared read was sent at most one round trip before the caller arrived, and the pipeline
        publishes about once a second, so a caller sees what it could have seen by arriving a
        few microseconds earlier. Without contention this costs nothing (no task is made).
        """
        waiters = self._snapshot_waiters
        if waiters is not None:
            shared: asyncio.Future[StoredSnapshot | _ReadAbandoned | None]
            shared = asyncio.get_running_loop().create_future()
            waiters.append(shared)
            result = await shared
            if isinstance(result, _ReadAbandoned):
                return await self._read_snapshot()
            return result
        self._snapshot_waiters = waiters = []
        try:
            snapshot = await self._read_snapshot()
        except asyncio.CancelledError:
            self._settle(waiters, result=_ReadAbandoned())  # they read for themselves
            raise
        except Exception as exc:
            self._settle(waiters, error=exc)
            raise
        self._settle(waiters, result=snapshot)
        return snapshot

    def _settle(self, waiters: list[asyncio.Future[Any]], *, result: object = None,
                error: Exception | None = None) -> None:
        self._snapshot_waiters = None
        for waiter in waiters:
            if waiter.done():  # that caller was cancelled
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(result)

    async def _read_snapshot(self) -> StoredSnapshot | None:
        """One round trip; the three fields are consistent because one MULTI/EXEC wrote them."""
        # The client returns bytes (decode_responses=False); its stubs also allow str.
        reply: list[Any] = await self.redis.hmget(
            self.keys.snapshot, ["json", "etag", "published_at"]
        )
        body, etag, published_at = reply
        if body is None or etag is None:
            return None
        return StoredSnapshot(body, etag.decode(), _float_or_zero(published_at))

    async def head_and_region(self, code: str) -> tuple[SnapshotHead | None, bytes | None]:
        """The snapshot head and one region entry in one round trip (one pipeline)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.snapshot, ["etag", "as_of", "published_at"])
        pipe.get(self.keys.region(code))
        replies: list[Any] = await pipe.execute()
        (etag, as_of, published_at), entry = replies
        if etag is None:
            return None, entry
        head = SnapshotHead(etag.decode(), _float_or_zero(as_of), _float_or_zero(published_at))
        return head, entry

    async def published_at(self) -> float | None:
        raw = await self.redis.hget(self.keys.snapshot, "published_at")
        return None if raw is None else _float_or_zero(raw)

    async def history(self, series: str, start: float, end: float) -> list[tuple[bytes, float]]:
        """Stored points with ``start <= t <= end``, oldest first, with their times (scores)."""
        rows: list[Any] = await self.redis.zrangebyscore(
            self.keys.history(series), start, end, withscores=True
        )
        return [(member, float(score)) for member, score in rows]

    async def blocks(self, limit: int) -> list[bytes]:
        """The ``limit`` highest blocks, highest first."""
        rows: list[Any] = await self.redis.zrevrange(self.keys.blocks, 0, limit - 1)
        return rows

    async def alert_records(self, since: float | None) -> list[bytes]:
        """Alert state changes at or after ``since``, newest first (at most MAX_ALERT_RECORDS)."""
        low: float | str = "-inf" if since is None else since
        rows: list[Any] = await self.redis.zrevrangebyscore(
            self.keys.alerts, "+inf", low, start=0, num=MAX_ALERT_RECORDS
        )
        return rows


def latest_alert_states(records: Iterable[bytes]) -> list[dict[str, Any]]:
    """One entry per alert id, its latest state change, newest first.

    The alerts set may hold both the ``firing`` and the ``resolved`` record of one alert; a
    client wants the alert once, as it stands now. ``records`` must come newest first (by the
    set's score, the time of the state change), so the first record seen for an id is its latest.
    """
    latest: dict[str, dict[str, Any]] = {}
    for raw in records:
        alert = orjson.loads(raw)
        latest.setdefault(str(alert.get("id")), alert)
    return list(latest.values())


def _float_or_zero(raw: bytes | str | None) -> float:
    """Unix seconds stored as a string; 0 (the epoch, so "very old") if absent."""
    return 0.0 if raw is None else float(raw)


# The dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a worker
# thread, which for these attribute reads would cost more than the whole request.


async def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def store_of(request: Request) -> EstimateStore:
    store: EstimateStore = request.app.state.store
    return store


SettingsDep = Annotated[Settings, Depends(settings_of)]
StoreDep = Annotated[EstimateStore, Depends(store_of)]
