"""Alert webhook against a real local HTTP receiver: signed, retried on 5xx, not on 4xx."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from streams.webhook import AlertWebhook, signature
from tests.conftest import free_port

ALERT = {"type": "regional_shift", "id": "KZ-1", "region": "KZ", "direction": "down",
         "detected_at": 1.0, "started_at": 0.5, "share_before": 0.13, "share_after": 0.02,
         "magnitude_pp": -11.0, "relative_change": -0.85, "score": 9.0, "state": "firing"}


@dataclass
class Receiver:
    statuses: list[int]
    seen: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    url: str = ""


@pytest.fixture()
async def receiver(request: pytest.FixtureRequest) -> AsyncIterator[Receiver]:
    state = Receiver(statuses=list(request.param))

    async def handle(req: web.Request) -> web.Response:
        state.seen.append((await req.read(), dict(req.headers)))
        return web.Response(status=state.statuses.pop(0) if state.statuses else 200)

    app = web.Application()
    app.router.add_post("/alerts", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/alerts"
    yield state
    await runner.cleanup()


@pytest.mark.parametrize("receiver", [[503, 502, 200]], indirect=True)
async def test_alert_is_signed_and_retried_until_delivered(receiver: Receiver) -> None:
    hook = AlertWebhook(receiver.url, "s3cret", first_backoff_s=0.05)
    hook.offer(ALERT)
    await hook.drain()
    assert len(receiver.seen) == 3
    body, headers = receiver.seen[-1]
    assert orjson.loads(body) == ALERT
    timestamp = headers["X-Hashatlas-Timestamp"]
    expected = hmac.new(b"s3cret", timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Hashatlas-Signature"] == f"sha256={expected}"
    assert signature(b"other", timestamp, body) != headers["X-Hashatlas-Signature"]


@pytest.mark.parametrize("receiver", [[400]], indirect=True)
async def test_a_refusal_is_not_retried(receiver: Receiver) -> None:
    hook = AlertWebhook(receiver.url, "s3cret", first_backoff_s=0.05)
    hook.offer(ALERT)
    hook.offer({**ALERT, "state": "resolved"})
    await hook.drain()
    assert [orjson.loads(b)["state"] for b, _ in receiver.seen] == ["firing", "resolved"]


def _deliveries(outcome: str) -> float:
    return REGISTRY.get_sample_value("hashatlas_alert_webhook_deliveries_total",
                                     {"outcome": outcome}) or 0.0


async def test_an_unreachable_receiver_is_given_up_on_boundedly() -> None:
    before = {outcome: _deliveries(outcome) for outcome in ("dropped", "failed")}
    hook = AlertWebhook(f"http://127.0.0.1:{free_port()}/alerts", "s", max_attempts=3,
                        first_backoff_s=0.01, max_queued=2)
    for i in range(5):  # queued faster than delivered: the oldest 3 are dropped, and counted
        hook.offer({**ALERT, "id": str(i)})
    await hook.drain()
    assert not hook.queue
    assert _deliveries("dropped") - before["dropped"] == 3
    assert _deliveries("failed") - before["failed"] == 2
