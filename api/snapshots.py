"""Answering with the stored snapshot: staleness, strong ETags, cache lifetime, and the bodies
of ``GET /v1/estimates/current`` (the stored bytes, gzipped or marked stale once per snapshot).
"""

from __future__ import annotations

import gzip
import math
import time
from dataclasses import dataclass

import orjson
from starlette.datastructures import State

from api.deps import EstimateStore, StoredSnapshot
from api.problems import ProblemError, service_unavailable
from streams.settings import Settings

CURRENT_PATH = "/v1/estimates/current"
GZIP_MINIMUM_BYTES = 1024
JSON_MEDIA_TYPE = "application/json"


def quoted_etag(stored_etag: str, *qualifiers: str) -> str:
    """A strong ETag; qualifiers make distinct tags for distinct bodies of one snapshot."""
    return '"' + "-".join([stored_etag.strip('"'), *qualifiers]) + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: weak comparison against each listed tag, or ``*``."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def cache_control(settings: Settings) -> str:
    """Caches may keep an answer for one snapshot interval (whole seconds, at least 1)."""
    return f"public, max-age={max(1, math.floor(settings.snapshot_interval_s))}"


def is_stale(published_at: float, settings: Settings, now: float) -> bool:
    return now - published_at > settings.stale_after_s


def mark_stale(body: bytes) -> bytes:
    document = orjson.loads(body)
    document["stale"] = True
    return orjson.dumps(document)


def no_snapshot(settings: Settings) -> ProblemError:
    return service_unavailable(
        "no-estimate", "no estimate published yet", math.ceil(settings.snapshot_interval_s)
    )


class SnapshotBodies:
    """Bodies derived from the current snapshot, made once per snapshot (keyed by its etag)."""

    def __init__(self) -> None:
        self._etag: str | None = None
        self._bodies: dict[tuple[bool, bool], bytes] = {}

    def body(self, stored: StoredSnapshot, *, stale: bool, gzipped: bool) -> bytes:
        if not stale and not gzipped:
            return stored.json
        if stored.etag != self._etag:
            self._etag, self._bodies = stored.etag, {}
        key = (stale, gzipped)
        body = self._bodies.get(key)
        if body is None:
            body = mark_stale(stored.json) if stale else stored.json
            if gzipped:
                body = gzip.compress(body, compresslevel=6, mtime=0)
            self._bodies[key] = body
        return body


@dataclass(frozen=True)
class CurrentAnswer:
    """A complete answer for ``GET /v1/estimates/current``, as raw ASGI status/headers/body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def answer_current(state: State, if_none_match: str | None,
                         gzip_accepted: bool) -> CurrentAnswer:
    """The current snapshot (or 304), from one shared Redis read; raises problems on failure."""
    store: EstimateStore = state.store
    settings: Settings = state.settings
    stored = await store.snapshot()
    if stored is None:
        raise no_snapshot(settings)
    stale = is_stale(stored.published_at, settings, time.time())
    etag = quoted_etag(stored.etag, "stale") if stale else quoted_etag(stored.etag)
    headers = [(b"etag", etag.encode()), (b"cache-control", cache_control(settings).encode()),
               (b"vary", b"Accept-Encoding")]
    if etag_matches(if_none_match, etag):
        return CurrentAnswer(304, headers, b"")
    gzipped = gzip_accepted and len(stored.json) >= GZIP_MINIMUM_BYTES
    bodies: SnapshotBodies = state.snapshot_bodies
    body = bodies.body(stored, stale=stale, gzipped=gzipped)
    headers.append((b"content-type", JSON_MEDIA_TYPE.encode()))
    headers.append((b"content-length", str(len(body)).encode()))
    if gzipped:
        headers.append((b"content-encoding", b"gzip"))
    return CurrentAnswer(200, headers, body)
