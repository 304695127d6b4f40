"""``GET /v1/stream``: Server-Sent Events relayed from the pipeline's Redis pub/sub channel.

Each client gets its own subscription, made before the response starts (so a dead Redis is a 503
problem, not a broken stream) and always released when the client goes away: the response owns
the subscription and closes it in ``finally``, whether the client left, Redis failed or the
server is shutting down. Comment lines every ``keepalive_s`` of silence keep proxies from
closing an idle connection.
"""

from __future__ import annotations

import logging
import time

import anyio
import orjson
from prometheus_client import Gauge
from redis.asyncio.client import PubSub
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.problems import REDIS_UNAVAILABLE_ERRORS

EVENT_TYPES = frozenset({"estimate", "alert"})
KEEPALIVE_S = 15.0
RECONNECT_MS = 5000
SSE_MEDIA_TYPE = "text/event-stream"

logger = logging.getLogger("hashatlas.api.sse")


def event_id(event: str, data: dict[str, object]) -> str:
    """An id a client can log or compare: the snapshot time, or the alert and its state."""
    if event == "estimate":
        raw = f"estimate-{data.get('as_of')}"
    else:
        raw = f"alert-{data.get('id')}-{data.get('state')}"
    # An id line must not contain line breaks or NUL (they would end the field early).
    return "".join(ch for ch in raw if ch not in "\r\n\0")


def format_event(event: str, data: dict[str, object]) -> bytes:
    """One SSE frame; orjson never emits a line break, so the JSON fits one ``data:`` line."""
    return (
        b"id: " + event_id(event, data).encode()
        + b"\nevent: " + event.encode()
        + b"\ndata: " + orjson.dumps(data)
        + b"\n\n"
    )


def frame_from_message(payload: bytes) -> bytes | None:
    """The frame for one pub/sub message ``{"event": ..., "data": {...}}``; None if unusable."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    event, data = message.get("event"), message.get("data")
    if event not in EVENT_TYPES or not isinstance(data, dict):
        return None
    return format_event(event, data)


class EventStreamResponse(Response):
    """An endless ``text/event-stream`` response that owns one pub/sub subscription."""

    media_type = SSE_MEDIA_TYPE

    def __init__(
        self, pubsub: PubSub, first_frame: bytes, *, keepalive_s: float, clients: Gauge
    ) -> None:
        self.status_code = 200
        self.background = None
        # No body attribute: init_headers then sets no Content-Length (the stream has none).
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.pubsub = pubsub
        self.first_frame = first_frame
        self.keepalive_s = keepalive_s
        self.clients = clients

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.clients.inc()
        client_gone = False
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            )
            opening = f"retry: {RECONNECT_MS}\n: connected\n\n".encode() + self.first_frame
            await send({"type": "http.response.body", "body": opening, "more_body": True})
            async with anyio.create_task_group() as tasks:

                async def watch_disconnect() -> None:
                    nonlocal client_gone
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    client_gone = True
                    tasks.cancel_scope.cancel()

                tasks.start_soon(watch_disconnect)
                await self._relay(send)
                tasks.cancel_scope.cancel()
            if not client_gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.clients.dec()
            with anyio.CancelScope(shield=True):
                # Closing the subscription's connection ends the subscription on the server
                # too, even if a cancelled read left the connection mid-reply.
                await self.pubsub.aclose()

    async def _relay(self, send: Send) -> None:
        """Forward messages until Redis fails; send a comment after each quiet keep-alive gap."""
        last_sent = time.monotonic()
        while True:
            wait = max(0.0, self.keepalive_s - (time.monotonic() - last_sent))
            try:
                message = await self.pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=wait
                )
            except REDIS_UNAVAILABLE_ERRORS as exc:
                # Ending the stream makes EventSource clients reconnect after `retry`.
                logger.warning("event stream ends: redis failed: %s", exc)
                return
            frame = None
            if message is not None and message.get("type") == "message":
                frame = frame_from_message(message["data"])
                if frame is None:
                    logger.warning("ignored a malformed message on the events channel")
            if frame is None and time.monotonic() - last_sent >= self.keepalive_s:
                frame = b": keep-alive\n\n"
            if frame is not None:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                last_sent = time.monotonic()
