"""The price feed: poll a public BTC/USD ticker and emit ``price`` events (CONTRACTS.md ``market``).

Any JSON ticker works: a dotted path names where the price sits (``data.amount`` for Coinbase,
``bitcoin.usd`` for CoinGecko, ``result.XXBTZUSD.c.0`` for Kraken; a numeric segment indexes a
list). Prices may be JSON numbers or numeric strings. A failed poll (HTTP error, a body that is
not JSON, a missing path, a value that is no positive finite number) is logged with its reason and
retried with a doubling delay; it never becomes an event, so hashprice is never computed from a
bad price.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
from aiokafka.errors import KafkaError

from streams.feeds import describe_error, pause, retry_delay

log = logging.getLogger("hashatlas.feeds.prices")

DEFAULT_INTERVAL_S = 60.0
DEFAULT_MAX_BACKOFF_S = 600.0
HTTP_TIMEOUT_S = 15.0
USER_AGENT = "hashatlas-price-feed"

Emit = Callable[[dict[str, Any]], Awaitable[None]]


class PriceError(ValueError):
    """A ticker answer that yields no usable price; the message says what was wrong."""


def parse_json_path(path: str) -> tuple[str, ...]:
    """``"result.XXBTZUSD.c.0"`` → its segments; ValueError for an empty path or segment."""
    segments = tuple(path.split("."))
    if not path or any(not segment for segment in segments):
        raise ValueError(f"JSON path {path!r} needs non-empty dot-separated keys, e.g. data.amount")
    return segments


def _price_value(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PriceError(f"value at {where!r} is {type(value).__name__}, not a number")
    try:
        price = float(value.strip()) if isinstance(value, str) else float(value)
    except ValueError:
        raise PriceError(f"value at {where!r} is {value!r:.40}, not a number") from None
    except OverflowError:
        raise PriceError(f"value at {where!r} is too large to be a price") from None
    if not math.isfinite(price):
        raise PriceError(f"value at {where!r} is {value!r:.40}, not a finite number")
    if price <= 0:
        raise PriceError(f"price at {where!r} is {price}, must be positive")
    return price


def extract_price(payload: Any, path: tuple[str, ...]) -> float:
    """Follow ``path`` into a parsed ticker answer and return the positive, finite price there."""
    node = payload
    for depth, segment in enumerate(path):
        where = ".".join(path[: depth + 1])
        if isinstance(node, dict):
            if segment not in node:
                keys = ", ".join(sorted(map(str, node))[:8])
                raise PriceError(f"path {where!r} is missing (keys there: {keys or 'none'})")
            node = node[segment]
        elif isinstance(node, list):
            if not segment.isdigit():
                raise PriceError(f"path {where!r}: a list is there, so the key must be an index")
            index = int(segment)
            if index >= len(node):
                raise PriceError(f"path {where!r}: index {index} beyond a list of {len(node)}")
            node = node[index]
        else:
            raise PriceError(f"path {where!r}: cannot look inside a {type(node).__name__}")
    return _price_value(node, ".".join(path))


def parse_ticker(body: bytes, path: tuple[str, ...]) -> float:
    """The price in a raw ticker body."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PriceError(f"answer is not JSON ({exc}): {body[:60]!r}") from None
    return extract_price(payload, path)


def price_event(btc_usd: float, ts: float, source: str) -> dict[str, Any]:
    return {"type": "price", "ts": ts, "btc_usd": btc_usd, "source": source}


async def fetch_price(client: httpx.AsyncClient, url: str, path: tuple[str, ...]) -> float:
    response = await client.get(url)
    if response.status_code != 200:
        raise PriceError(f"HTTP {response.status_code}: {response.content[:60]!r}")
    return parse_ticker(response.content, path)


def http_client(timeout_s: float = HTTP_TIMEOUT_S) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeout_s, follow_redirects=True, headers={"user-agent": USER_AGENT}
    )


async def follow_prices(
    client: httpx.AsyncClient,
    url: str,
    path: tuple[str, ...],
    emit: Emit,
    *,
    source: str,
    interval_s: float = DEFAULT_INTERVAL_S,
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Poll every ``interval_s``; after k failures in a row wait interval·2^k, at most the cap.

    ``ts`` of each event is when the answer arrived (``clock``), in Unix seconds.
    """
    if interval_s <= 0 or max_backoff_s <= 0:
        raise ValueError("interval_s and max_backoff_s must be positive")
    failures = 0
    while stop is None or not stop.is_set():
        try:
            price = await fetch_price(client, url, path)
            await emit(price_event(price, clock(), source))
        except (PriceError, httpx.HTTPError, KafkaError) as exc:
            failures += 1
            delay = retry_delay(failures, interval_s, max(max_backoff_s, interval_s))
            log.warning("price feed %s: %s; nothing emitted, retrying in %.1f s",
                        url, describe_error(exc), delay)
        else:
            if failures:
                log.info("price feed %s: answering again after %d failures", url, failures)
            failures = 0
            delay = interval_s
        await pause(delay, stop)
