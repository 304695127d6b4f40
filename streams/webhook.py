"""Alert delivery by webhook, for desks that do not run Prometheus/Alertmanager.

Each alert state change is POSTed as the same JSON the ``alerts`` topic carries, signed with a
shared secret: ``X-Hashatlas-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` and
``X-Hashatlas-Timestamp: <unix seconds>`` (the timestamp is signed too, so a captured request
cannot be replayed later as new). Deliveries are retried with exponential backoff on network
errors, 429 and 5xx; a 4xx other than 429 is final. The queue is bounded: when the receiver is
down for long, the oldest undelivered alerts are dropped and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import deque
from typing import Any

import httpx
import orjson
from prometheus_client import Counter

log = logging.getLogger("hashatlas.webhook")

DELIVERIES = Counter(
    "hashatlas_alert_webhook_deliveries_total",
    "Alert webhook deliveries by outcome (delivered, failed, dropped)",
    ["outcome"],
)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The value of X-Hashatlas-Signature for a body sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class AlertWebhook:
    """A bounded queue of alerts and one task that delivers them in order."""

    def __init__(self, url: str, secret: str, *, max_attempts: int = 6,
                 first_backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 timeout_s: float = 10.0, max_queued: int = 1000) -> None:
        self.url = url
        self.secret = secret.encode()
        self.max_attempts = max_attempts
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.queue: deque[dict[str, Any]] = deque()
        self.max_queued = max_queued
        self._task: asyncio.Task[None] | None = None

    def offer(self, alert: dict[str, Any]) -> None:
        if len(self.queue) >= self.max_queued:
            self.queue.popleft()
            DELIVERIES.labels("dropped").inc()
            log.warning("alert webhook queue full: dropped the oldest alert")
        self.queue.append(alert)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._deliver_all())

    async def drain(self) -> None:
        """Wait until everything queued has been delivered or given up on."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _deliver_all(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while self.queue:
                alert = self.queue.popleft()
                delivered = await self._deliver(client, alert)
                DELIVERIES.labels("delivered" if delivered else "failed").inc()

    async def _deliver(self, client: httpx.AsyncClient, alert: dict[str, Any]) -> bool:
        body = orjson.dumps(alert)
        backoff = self.first_backoff_s
        for attempt in range(1, self.max_attempts + 1):
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-Hashatlas-Timestamp": timestamp,
                       "X-Hashatlas-Signature": signature(self.secret, timestamp, body)}
            try:
                response = await client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}"
            else:
                if response.status_code < 300:
                    return True
                if response.status_code < 500 and response.status_code != 429:
                    log.error("alert webhook refused alert %s: HTTP %d (not retried)",
                              alert.get("id"), response.status_code)
                    return False
                reason = f"HTTP {response.status_code}"
            if attempt < self.max_attempts:
                log.warning("alert webhook attempt %d failed (%s); retrying in %.1f s",
                            attempt, reason, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        log.error("alert webhook gave up on alert %s after %d attempts", alert.get("id"),
                  self.max_attempts)
        return False
