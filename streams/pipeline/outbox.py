"""The snapshot leader's outputs to Kafka, queued so that its timer never waits on the broker.

During a broker outage the producer's buffer fills and a send blocks; the leader's timer must
go on writing snapshots to Redis all the same. So the leader only offers its outputs here, and
one task sends them in order. The rules when the broker is away:

- a topic in ``latest_only`` (``estimates``: each snapshot supersedes the last) keeps only its
  newest body; the superseded ones are dropped and counted;
- every other topic (history steps, alerts: what Redis is rebuilt from) waits in one queue of at
  most ``capacity`` bodies; past that the oldest is dropped and counted.

A send that fails is retried with backoff until it succeeds; nothing is lost while it waits
except by the two rules above.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge

log = logging.getLogger("hashatlas.outbox")

OUTPUTS = Counter(
    "hashatlas_leader_outputs_total",
    "Leader outputs to Kafka by topic and outcome (sent, superseded, dropped)",
    ["topic", "outcome"],
)
OUTPUTS_QUEUED = Gauge(
    "hashatlas_leader_outputs_queued", "Leader outputs waiting to be sent to Kafka"
)

Send = Callable[[str, bytes], Awaitable[Any]]


class Outbox:
    """A bounded, ordered queue of (topic, body) drained by one task."""

    def __init__(self, send: Send, *, capacity: int, latest_only: Iterable[str] = (),
                 first_backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._send = send
        self.capacity = capacity
        self.latest_only = frozenset(latest_only)
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.queue: deque[tuple[str, bytes]] = deque()
        self.latest: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.queue) + len(self.latest)

    async def send(self, topic: str, body: bytes) -> None:
        """Queue one output; returns at once (the leader's ``Send``)."""
        self.offer(topic, body)

    def offer(self, topic: str, body: bytes) -> None:
        if topic in self.latest_only:
            if topic in self.latest:
                OUTPUTS.labels(topic, "superseded").inc()
            self.latest[topic] = body
        else:
            if len(self.queue) >= self.capacity:
                dropped, _ = self.queue.popleft()
                OUTPUTS.labels(dropped, "dropped").inc()
                log.warning("leader outbox full (%d): dropped the oldest %s output",
                            self.capacity, dropped)
            self.queue.append((topic, body))
        OUTPUTS_QUEUED.set(len(self))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._send_all())

    async def drain(self) -> None:
        """Wait until everything offered so far has been sent."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def _next(self) -> tuple[str, bytes] | None:
        if self.queue:
            return self.queue.popleft()
        if self.latest:
            topic = next(iter(self.latest))
            return topic, self.latest.pop(topic)
        return None

    async def _send_all(self) -> None:
        while (item := self._next()) is not None:
            OUTPUTS_QUEUED.set(len(self))
            await self._send_one(*item)
        OUTPUTS_QUEUED.set(0)

    async def _send_one(self, topic: str, body: bytes) -> None:
        backoff = self.first_backoff_s
        while True:
            try:
                await self._send(topic, body)
            except Exception as exc:  # the broker's errors vary; every one is retried
                log.warning("sending to %s failed (%s); retrying in %.1f s", topic, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            OUTPUTS.labels(topic, "sent").inc()
            return
