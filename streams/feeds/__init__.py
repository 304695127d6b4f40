"""Feeds that bring outside data into the pipeline's input topics: blocks and BTC/USD prices.

Each feed keeps its parsing pure (JSON from a node or ticker in, contract event dicts out) and does
its HTTP and Kafka work at thin edges. What both share lives here: the retry schedule and the Kafka
sink that refuses to send anything the pipeline would dead-letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from streams.contracts import InvalidEvent, decode_input
from streams.kafka import client_options
from streams.settings import Settings

log = logging.getLogger("hashatlas.feeds")


def retry_delay(failures: int, base_s: float, maximum_s: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures: base, doubled each time, capped.

    Doubling keeps a feed from hammering a node or a rate-limited public API that is down, while
    the cap bounds how stale the feed can get once the source answers again.
    """
    if failures < 0:
        raise ValueError("failures must not be negative")
    if base_s <= 0 or maximum_s <= 0:
        raise ValueError("base_s and maximum_s must be positive")
    # Cap the exponent first: 2.0 ** 1100 overflows a float.
    return min(maximum_s, base_s * 2.0 ** min(failures, 64))


async def pause(delay_s: float, stop: asyncio.Event | None) -> None:
    """Sleep ``delay_s``, waking early when ``stop`` is set (how tests and shutdown end a feed)."""
    if stop is None:
        await asyncio.sleep(delay_s)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay_s)


def describe_error(exc: BaseException) -> str:
    """An error as one log line: its class (httpx's messages alone can be empty) and message."""
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        return f"HTTP {response.status_code} {response.reason_phrase} from {exc.request.url}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class KafkaEventSink:
    """An idempotent Kafka producer that sends only events :func:`decode_input` accepts.

    Each send waits for the broker's acknowledgement, so a feed records an event as delivered only
    once it really is, and a reorg's replacement blocks keep their order.
    """

    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(
            **client_options(settings),
            acks="all",
            enable_idempotence=True,
            max_request_size=settings.max_message_bytes,
        )

    async def __aenter__(self) -> KafkaEventSink:
        await self._producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._producer.stop()

    async def send(self, topic: str, key: str, event: dict[str, Any]) -> None:
        """Validate ``event`` against the input contracts, then produce it and wait for the ack."""
        try:
            decode_input(event)
        except InvalidEvent as exc:
            raise ValueError(f"refusing to send what the pipeline would reject: {exc}") from None
        await self._producer.send_and_wait(topic, orjson.dumps(event), key=key.encode("utf-8"))
